package qataccel

import (
	"bytes"
	"compress/flate"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/accel"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeSys lays out a directory like sysfs and /dev with the given PCI
// devices (address → vendor, device, driver) and registered drivers.
type pciDev struct{ addr, vendor, device, driver string }

func fakeSys(t *testing.T, devs []pciDev, drivers, nodes []string) string {
	t.Helper()
	root := t.TempDir()
	mk := func(p string) {
		if err := os.MkdirAll(filepath.Join(root, p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(p, s string) {
		if err := os.WriteFile(filepath.Join(root, p), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mk("sys/bus/pci/devices")
	mk("sys/bus/pci/drivers")
	mk("dev")
	for _, d := range devs {
		dir := "sys/bus/pci/devices/" + d.addr
		mk(dir)
		write(dir+"/vendor", d.vendor+"\n")
		write(dir+"/device", d.device+"\n")
		if d.driver != "" {
			mk("sys/bus/pci/drivers/" + d.driver)
			if err := os.Symlink("../../../bus/pci/drivers/"+d.driver, filepath.Join(root, dir, "driver")); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, d := range drivers {
		mk("sys/bus/pci/drivers/" + d)
	}
	for _, n := range nodes {
		write("dev/"+n, "")
	}
	return root
}

func TestProbeFindsQATDevices(t *testing.T) {
	root := fakeSys(t, []pciDev{
		{"0000:00:01.0", "0x1af4", "0x1000", "virtio-pci"}, // virtio net
		{"0000:00:02.0", "0x8086", "0x1237", ""},           // Intel host bridge, not QAT
		{"0000:6b:00.0", "0x8086", "0x4940", "4xxx"},
		{"0000:3d:00.0", "0x8086", "0x37c8", "c6xx"},
		{"0000:3d:01.1", "0x8086", "0x37c9", "vfio-pci"},
		{"0000:99:00.0", "0x8086", "garbage", ""},
	}, nil, []string{"qat_adf_ctl"})
	p := ProbeSystem(root)
	if p.Err != nil {
		t.Fatal(p.Err)
	}
	want := []Device{
		{Address: "0000:3d:00.0", DeviceID: 0x37c8, Model: "c62x", Driver: "c6xx"},
		{Address: "0000:3d:01.1", DeviceID: 0x37c9, Model: "c62x", VF: true, Driver: "vfio-pci"},
		{Address: "0000:6b:00.0", DeviceID: 0x4940, Model: "4xxx", Driver: "4xxx"},
	}
	if !slices.Equal(p.Devices, want) {
		t.Fatalf("devices %+v\nwant %+v", p.Devices, want)
	}
	if p.Scanned != 6 || !slices.Equal(p.Drivers, []string{"c6xx", "4xxx"}) || !slices.Equal(p.CtlNodes, []string{"/dev/qat_adf_ctl"}) {
		t.Fatalf("probe %+v", p)
	}
	// A found device still cannot be used: no library in this build.
	h := New(Config{Root: root}).Health()
	if h.Status != sdk.Unhealthy || !strings.Contains(h.Detail, "0000:6b:00.0 (4xxx PF") || !strings.Contains(h.Detail, "no QAT library") {
		t.Fatalf("health %+v", h)
	}
}

func TestProbeNothingFound(t *testing.T) {
	root := fakeSys(t, []pciDev{{"0000:00:01.0", "0x1af4", "0x1000", "virtio-pci"}}, nil, nil)
	h := New(Config{Root: root}).Health()
	if h.Status != sdk.Unhealthy {
		t.Fatalf("status %v", h.Status)
	}
	for _, s := range []string{"no QAT device found among 1 PCI devices", "no QAT kernel driver loaded", "no QAT library in this build", EnvEmulate + "=1"} {
		if !strings.Contains(h.Detail, s) {
			t.Errorf("detail %q lacks %q", h.Detail, s)
		}
	}
	// No sysfs at all (a minimal container) is reported, not hidden.
	h = New(Config{Root: t.TempDir()}).Health()
	if h.Status != sdk.Unhealthy || !strings.Contains(h.Detail, "PCI bus could not be read") {
		t.Fatalf("no sysfs: %+v", h)
	}
}

func TestProbeThisMachine(t *testing.T) {
	p := ProbeSystem("/")
	h := New(Config{}).Health()
	if h.Status != sdk.Unhealthy {
		t.Fatalf("this build has no QAT library, health must be unhealthy: %+v", h)
	}
	if !p.Found() && !strings.Contains(h.Detail, "no QAT device found") {
		t.Fatalf("detail %q", h.Detail)
	}
	t.Logf("probe: %s", p.Summary())
}

func TestNotEmulatedOffersNothing(t *testing.T) {
	a := New(Config{})
	c := a.Capabilities()
	if len(c.Ops) != 0 || c.Emulated || c.CompressFormat != "" {
		t.Fatalf("caps %+v", c)
	}
	if a.Name() != "qat" || strings.Contains(a.Summary(), "EMULATED") {
		t.Fatalf("name %q summary %q", a.Name(), a.Summary())
	}
	for _, op := range []accel.Op{accel.OpZeroScan, accel.OpHashXXH3, accel.OpXOR, accel.OpCompress, accel.OpDecompress} {
		out, err := a.Run([]byte("d"), op, 1, []byte("abc"))
		if !errors.Is(err, sdk.ErrUnsupported) || string(out) != "d" {
			t.Errorf("%s: %q %v", op, out, err)
		}
	}
}

func TestEmulatedIsLabelled(t *testing.T) {
	a := New(Config{Emulate: true, Root: fakeSys(t, nil, nil, nil)})
	c := a.Capabilities()
	if !c.Emulated || c.CompressFormat != "deflate" || !slices.Equal(c.Ops, []accel.Op{accel.OpCompress, accel.OpDecompress}) ||
		!slices.Equal(c.Features, []string{EmulatedFeature}) {
		t.Fatalf("caps %+v", c)
	}
	if a.Name() != "qat-emulated" || !strings.HasPrefix(a.Summary(), "EMULATED — no QAT hardware") {
		t.Fatalf("name %q summary %q", a.Name(), a.Summary())
	}
	h := a.Health()
	if h.Status != sdk.Degraded || !strings.HasPrefix(h.Detail, "EMULATED — no QAT hardware") || !strings.Contains(h.Detail, "no QAT device found") {
		t.Fatalf("health %+v", h)
	}
	for _, op := range []accel.Op{accel.OpZeroScan, accel.OpHashXXH3, accel.OpXOR, accel.Op(77)} {
		if _, err := a.Run(nil, op, 4096, make([]byte, 4096)); !errors.Is(err, sdk.ErrUnsupported) {
			t.Errorf("%s: %v", op, err)
		}
	}
}

func inputs() map[string][]byte {
	r := rand.New(rand.NewPCG(5, 6))
	random := make([]byte, 100000)
	for i := range random {
		random[i] = byte(r.Uint32())
	}
	return map[string][]byte{
		"empty":  {},
		"byte":   {42},
		"text":   bytes.Repeat([]byte("QuickAssist would do this in hardware. "), 300),
		"zeros":  make([]byte, 1<<18),
		"random": random,
	}
}

func TestDeflateRoundTripAndInterop(t *testing.T) {
	a := New(Config{Emulate: true})
	for name, in := range inputs() {
		for level := int64(MinLevel); level <= MaxLevel; level++ {
			enc, err := a.Run([]byte("hdr"), accel.OpCompress, level, in)
			if err != nil || string(enc[:3]) != "hdr" {
				t.Fatalf("%s level %d: %v", name, level, err)
			}
			enc = enc[3:]
			// Plain raw deflate: the standard library reads it.
			std, err := io.ReadAll(flate.NewReader(bytes.NewReader(enc)))
			if err != nil || !bytes.Equal(std, in) {
				t.Fatalf("%s level %d: stdlib inflate: %v", name, level, err)
			}
			dec, err := a.Run(nil, accel.OpDecompress, int64(len(in)), enc)
			if err != nil || !bytes.Equal(dec, in) {
				t.Fatalf("%s level %d: round trip: %v", name, level, err)
			}
			if len(in) > 0 {
				if _, err := a.Run(nil, accel.OpDecompress, int64(len(in)-1), enc); !errors.Is(err, sdk.ErrTooLarge) {
					t.Fatalf("%s level %d: one below size: %v", name, level, err)
				}
			}
		}
	}
}

// zlibBlock was made by Python's zlib (the C reference implementation),
// raw deflate at level 6, from zlibInput.
const zlibBlock = "0b740c5148494dcb492c4955c8cc2b492dca2fb052484c4a1e72888191899985958d9d83938b9b87978f5f4050485844544c5c42524a5a46564e5e4151495945554d5d43534b5b47574fdfc0d0c8d8c4d4ccdcc2d2cadac6d6ce1e00"

func zlibInput() []byte {
	in := append([]byte("QAT deflate interop: "), bytes.Repeat([]byte("abc"), 60)...)
	for i := range 64 {
		in = append(in, byte(i))
	}
	return in
}

func TestInflatesZlibOutput(t *testing.T) {
	block, _ := hex.DecodeString(zlibBlock)
	dec, err := New(Config{Emulate: true}).Run(nil, accel.OpDecompress, 1000, block)
	if err != nil || !bytes.Equal(dec, zlibInput()) {
		t.Fatalf("got %q, %v", dec, err)
	}
}

func TestInflateRejects(t *testing.T) {
	a := New(Config{Emulate: true})
	valid, err := a.Run(nil, accel.OpCompress, 6, inputs()["text"])
	if err != nil {
		t.Fatal(err)
	}
	reserved := []byte{0x07, 0x00} // final block, BTYPE=11 (reserved)
	cases := []struct {
		name string
		arg  int64
		in   []byte
		want error
	}{
		{"empty", 1 << 20, nil, sdk.ErrCorruptInput},
		{"truncated", 1 << 20, valid[:len(valid)/2], sdk.ErrCorruptInput},
		{"reserved block type", 1 << 20, reserved, sdk.ErrCorruptInput},
		{"trailing bytes", 1 << 20, append(slices.Clone(valid), 0xAA, 0xBB), sdk.ErrCorruptInput},
		{"negative limit", -1, valid, sdk.ErrInvalidArgument},
		{"over limit", 10, valid, sdk.ErrTooLarge},
	}
	for _, c := range cases {
		out, err := a.Run([]byte("k"), accel.OpDecompress, c.arg, c.in)
		if !errors.Is(err, c.want) || string(out) != "k" {
			t.Errorf("%s: %q, %v; want %v", c.name, out, err, c.want)
		}
	}
	for _, level := range []int64{-1, 0, 10} {
		if _, err := a.Run(nil, accel.OpCompress, level, []byte("x")); !errors.Is(err, sdk.ErrInvalidArgument) {
			t.Errorf("level %d: %v", level, err)
		}
	}
}

// A deflate bomb (a few KiB expanding to many MiB) is stopped at the limit
// without dst growing past it.
func TestInflateBombStopsAtLimit(t *testing.T) {
	a := New(Config{Emulate: true})
	bomb, err := a.Run(nil, accel.OpCompress, 9, make([]byte, 64<<20))
	if err != nil {
		t.Fatal(err)
	}
	dst := make([]byte, 0, 16)
	out, err := a.Run(dst, accel.OpDecompress, 1<<20, bomb)
	if !errors.Is(err, sdk.ErrTooLarge) || len(out) != 0 {
		t.Fatalf("%d bytes, %v", len(out), err)
	}
	if cap(out) > 2<<20 {
		t.Fatalf("dst grew to %d bytes for a 1 MiB limit", cap(out))
	}
}

func TestEmulatedZeroAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under the race detector")
	}
	a := New(Config{Emulate: true})
	in := inputs()["text"]
	enc, _ := a.Run(nil, accel.OpCompress, 1, in)
	dst := make([]byte, 0, 2*len(in))
	for _, c := range []struct {
		op  accel.Op
		arg int64
		in  []byte
	}{{accel.OpCompress, 1, in}, {accel.OpCompress, 6, in}, {accel.OpDecompress, int64(len(in)), enc}} {
		allocs := testing.AllocsPerRun(50, func() {
			var err error
			if dst, err = a.Run(dst[:0], c.op, c.arg, c.in); err != nil {
				t.Fatal(err)
			}
		})
		if allocs != 0 {
			t.Errorf("%s level/limit %d: %.1f allocations per call", c.op, c.arg, allocs)
		}
	}
}
