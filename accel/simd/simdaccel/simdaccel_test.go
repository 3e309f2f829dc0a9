package simdaccel

import (
	"bytes"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/accel"
	"github.com/klauspost/compress/s2"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// variants builds every implementation this CPU can run, so that each
// path is checked against the same expectations.
func variants(t testing.TB) map[string]*Accel {
	t.Helper()
	out := map[string]*Accel{}
	f := detect()
	out["detected"] = build(f, options{compression: true})
	out["generic"] = build(f, options{generic: true, compression: true})
	noAVX := f
	noAVX.avx2, noAVX.avx512 = false, false
	out["no-avx"] = build(noAVX, options{compression: true})
	return out
}

func mustRun(t testing.TB, a *Accel, op accel.Op, arg int64, in []byte) []byte {
	t.Helper()
	out, err := a.Run(nil, op, arg, in)
	if err != nil {
		t.Fatalf("%s arg %d on %d bytes: %v", op, arg, len(in), err)
	}
	return out
}

// refZero is the obvious byte loop every path must agree with.
func refZero(in []byte, ps int) []byte {
	var out []byte
	for p := 0; p < len(in); p += ps {
		z := byte(1)
		for _, c := range in[p : p+ps] {
			if c != 0 {
				z = 0
				break
			}
		}
		out = append(out, z)
	}
	return out
}

func TestZeroScanEveryPathEveryPosition(t *testing.T) {
	for name, a := range variants(t) {
		for _, ps := range []int{1, 7, 8, 63, 64, 65, 255, 256, 257, 4095, 4096, 4097, 8192, 12288} {
			// Page i carries a single 0x80 at one offset (page 0 stays
			// zero): every offset for small pages, and for large ones
			// the first and last 300 plus every 7th, which covers each
			// vector lane, every unrolled step and the scalar tails.
			var offs []int
			for o := range ps {
				if ps <= 1024 || o < 300 || o >= ps-300 || o%7 == 0 {
					offs = append(offs, o)
				}
			}
			in := make([]byte, (len(offs)+1)*ps)
			for i, o := range offs {
				in[(i+1)*ps+o] = 0x80
			}
			got := mustRun(t, a, accel.OpZeroScan, int64(ps), in)
			want := refZero(in, ps)
			if !bytes.Equal(got, want) {
				t.Fatalf("%s (%s) page size %d: zero scan differs from reference at %d", name, a.Paths().ZeroScan, ps, firstDiff(got, want))
			}
		}
	}
}

func TestZeroScanAppendsAfterDst(t *testing.T) {
	a := variants(t)["detected"]
	in := make([]byte, 3*4096)
	in[4096+17] = 1
	dst := []byte("keep")
	out, err := a.Run(dst, accel.OpZeroScan, 4096, in)
	if err != nil {
		t.Fatal(err)
	}
	if want := []byte("keep\x01\x00\x01"); !bytes.Equal(out, want) {
		t.Fatalf("got %q, want %q", out, want)
	}
}

func TestXOREveryPath(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for name, a := range variants(t) {
		for _, half := range []int{0, 1, 7, 31, 32, 33, 4096, 4099, 65536} {
			in := make([]byte, 2*half)
			for i := range in {
				in[i] = byte(r.Uint32())
			}
			want := make([]byte, half)
			for i := range want {
				want[i] = in[i] ^ in[half+i]
			}
			got, err := a.Run([]byte{0xEE}, accel.OpXOR, 0, in)
			if err != nil {
				t.Fatal(err)
			}
			if got[0] != 0xEE || !bytes.Equal(got[1:], want) {
				t.Fatalf("%s (%s) half %d: xor wrong at %d", name, a.Paths().XOR, half, firstDiff(got[1:], want))
			}
			// XOR against the result restores the new half: the delta
			// round trip the page stage relies on.
			back := mustRun(t, a, accel.OpXOR, 0, append(slices.Clone(in[:half]), got[1:]...))
			if !bytes.Equal(back, in[half:]) {
				t.Fatalf("%s half %d: old XOR delta != new", name, half)
			}
		}
	}
}

// Known answers from the reference implementation (xxhsum 0.8.1 -H2,
// which prints the canonical big-endian high-then-low form).
var xxh128Vectors = []struct {
	name string
	page func() []byte
	want string
}{
	{"zero4096", func() []byte { return make([]byte, 4096) }, "3ee8dc4f9e7ee49593d76fe148c689ba"},
	{"ramp4096", func() []byte { return ramp(4096, 1, 0) }, "03916578969f7a66eb4b7c3707879151"},
	{"mix4096", func() []byte { return ramp(4096, 7, 3) }, "1546867423105cd5d7428746842be37e"},
	{"ramp1024", func() []byte { return ramp(1024, 1, 0) }, "83885e853bb6640ca870f92984398d22"},
	{"ramp100", func() []byte { return ramp(100, 1, 0) }, "da95ef16fd9566f329b20ba5f03ec01e"},
	{"ramp17", func() []byte { return ramp(17, 1, 0) }, "685bc458b37d057fc06e233df7729217"},
	{"one-zero-byte", func() []byte { return []byte{0} }, "a6cd5e9392000f6ac44bdff4074eecdb"},
}

func ramp(n, mul, add int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*mul + add)
	}
	return b
}

func TestHashKnownAnswers(t *testing.T) {
	a := variants(t)["detected"]
	for _, v := range xxh128Vectors {
		page := v.page()
		// Two copies of the page: both digests must be the vector.
		in := append(slices.Clone(page), page...)
		got := mustRun(t, a, accel.OpHashXXH3, int64(len(page)), in)
		want := v.want + v.want
		if hex.EncodeToString(got) != want {
			t.Errorf("%s: got %x, want %s", v.name, got, want)
		}
	}
}

func TestCompressRoundTripAndInterop(t *testing.T) {
	a := variants(t)["detected"]
	r := rand.New(rand.NewPCG(3, 4))
	random := make([]byte, 20000)
	for i := range random {
		random[i] = byte(r.Uint32())
	}
	inputs := map[string][]byte{
		"empty":  {},
		"short":  []byte("dwcp"),
		"text":   bytes.Repeat([]byte("live migration moves pages; "), 500),
		"zeros":  make([]byte, 65536),
		"random": random,
	}
	for name, in := range inputs {
		for level := int64(LevelFast); level <= LevelBest; level++ {
			enc := mustRun(t, a, accel.OpCompress, level, in)
			// The block is plain s2: the library decodes it without us.
			plain, err := s2.Decode(nil, enc)
			if err != nil || !bytes.Equal(plain, in) {
				t.Fatalf("%s level %d: s2.Decode of our block: %v", name, level, err)
			}
			dec, err := a.Run([]byte("x"), accel.OpDecompress, int64(len(in)), enc)
			if err != nil || !bytes.Equal(dec[1:], in) || dec[0] != 'x' {
				t.Fatalf("%s level %d: round trip: %v", name, level, err)
			}
			if len(in) > 0 {
				_, err = a.Run(nil, accel.OpDecompress, int64(len(in)-1), enc)
				if !errors.Is(err, sdk.ErrTooLarge) {
					t.Fatalf("%s level %d: limit one below the size: err %v, want ErrTooLarge", name, level, err)
				}
			}
		}
		if name == "text" && len(mustRun(t, a, accel.OpCompress, LevelFast, in)) > len(in)/10 {
			t.Fatalf("repetitive text did not compress")
		}
	}
	// Blocks made by the library decode through the accelerator.
	enc := s2.EncodeBetter(nil, inputs["text"])
	if dec := mustRun(t, a, accel.OpDecompress, 1<<20, enc); !bytes.Equal(dec, inputs["text"]) {
		t.Fatal("library block did not decode")
	}
}

func TestRejectsBadInput(t *testing.T) {
	a := variants(t)["detected"]
	noCompress := build(detect(), options{compression: false})
	valid := mustRun(t, a, accel.OpCompress, LevelFast, bytes.Repeat([]byte("abcdefgh"), 512))
	truncated := valid[:len(valid)-3]
	// s2 blocks carry no checksum, so only damage that breaks the
	// structure is detectable: here the first tag becomes a copy from an
	// offset before the start of the output.
	badOffset := slices.Clone(valid)
	copy(badOffset[2:], []byte{0x0e, 0xff, 0xff})
	trailing := append(slices.Clone(valid), 0x00, 0x01)

	cases := []struct {
		name string
		a    *Accel
		op   accel.Op
		arg  int64
		in   []byte
		want error
	}{
		{"zero-scan page size 0", a, accel.OpZeroScan, 0, make([]byte, 4096), sdk.ErrInvalidArgument},
		{"zero-scan negative page size", a, accel.OpZeroScan, -4096, make([]byte, 4096), sdk.ErrInvalidArgument},
		{"zero-scan partial page", a, accel.OpZeroScan, 4096, make([]byte, 4097), sdk.ErrInvalidArgument},
		{"zero-scan page larger than input", a, accel.OpZeroScan, 8192, make([]byte, 4096), sdk.ErrInvalidArgument},
		{"hash partial page", a, accel.OpHashXXH3, 4096, make([]byte, 100), sdk.ErrInvalidArgument},
		{"hash page size 0", a, accel.OpHashXXH3, 0, make([]byte, 100), sdk.ErrInvalidArgument},
		{"xor odd length", a, accel.OpXOR, 0, make([]byte, 4097), sdk.ErrInvalidArgument},
		{"compress level 0", a, accel.OpCompress, 0, []byte("x"), sdk.ErrInvalidArgument},
		{"compress level 4", a, accel.OpCompress, 4, []byte("x"), sdk.ErrInvalidArgument},
		{"decompress negative limit", a, accel.OpDecompress, -1, valid, sdk.ErrInvalidArgument},
		{"decompress empty", a, accel.OpDecompress, 1 << 20, nil, sdk.ErrCorruptInput},
		{"decompress truncated", a, accel.OpDecompress, 1 << 20, truncated, sdk.ErrCorruptInput},
		{"decompress bad copy offset", a, accel.OpDecompress, 1 << 20, badOffset, sdk.ErrCorruptInput},
		{"decompress trailing bytes", a, accel.OpDecompress, 1 << 20, trailing, sdk.ErrCorruptInput},
		{"decompress huge header", a, accel.OpDecompress, 1 << 20, []byte{0xff, 0xff, 0xff, 0xff, 0x0f}, sdk.ErrTooLarge},
		{"unknown op", a, accel.Op(99), 0, nil, sdk.ErrUnsupported},
		{"compress when off", noCompress, accel.OpCompress, 1, []byte("x"), sdk.ErrUnsupported},
		{"decompress when off", noCompress, accel.OpDecompress, 10, valid, sdk.ErrUnsupported},
	}
	for _, c := range cases {
		dst := []byte("pre")
		out, err := c.a.Run(dst, c.op, c.arg, c.in)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: err %v, want %v", c.name, err, c.want)
		}
		if string(out) != "pre" {
			t.Errorf("%s: dst changed to %q on error", c.name, out)
		}
	}
}

func TestSelection(t *testing.T) {
	zen5 := cpuFeatures{arch: "amd64", sse2: true, avx2: true, avx512: true, xxh3AVX512: true, xxh3AVX2: true, xxh3SSE2: true}
	old := cpuFeatures{arch: "amd64", sse2: true, xxh3SSE2: true}
	arm := cpuFeatures{arch: "arm64", asimd: true}
	riscv := cpuFeatures{arch: "riscv64"}

	wantZero := "memequal-avx2"
	if archsimdZero != nil {
		wantZero = "archsimd-avx512"
	}
	cases := []struct {
		name     string
		f        cpuFeatures
		generic  bool
		paths    Paths
		features []string
	}{
		{"zen5", zen5, false, Paths{wantZero, "xxh3-avx512", "subtle-sse2", "s2-block"}, nil},
		{"zen5 generic", zen5, true, Paths{"word64-go", "xxh3-avx512", "word64-go", "s2-block"}, []string{"avx2", "avx512f"}},
		{"sse2 only", old, false, Paths{"memequal-sse2", "xxh3-sse2", "subtle-sse2", "s2-block"}, []string{"sse2"}},
		{"arm64", arm, false, Paths{"memequal-neon", "xxh3-neon", "subtle-neon", "s2-block"}, []string{"asimd"}},
		{"riscv64", riscv, false, Paths{"memequal", "xxh3-scalar", "subtle", "s2-block"}, nil},
	}
	for _, c := range cases {
		a := build(c.f, options{generic: c.generic, compression: true})
		if a.Paths() != c.paths {
			t.Errorf("%s: paths %+v, want %+v", c.name, a.Paths(), c.paths)
		}
		if c.features != nil && !slices.Equal(a.Capabilities().Features, c.features) {
			t.Errorf("%s: features %v, want %v", c.name, a.Capabilities().Features, c.features)
		}
	}
	// Zen 5 lists every feature its paths use, once each, sorted.
	f := build(zen5, options{compression: true}).Capabilities().Features
	want := []string{"avx2", "avx512f", "sse2"}
	if archsimdZero != nil {
		want = []string{"avx2", "avx512bw", "avx512f", "sse2"}
	}
	if !slices.Equal(f, want) {
		t.Errorf("zen5 features %v, want %v", f, want)
	}
}

func TestCapabilitiesOps(t *testing.T) {
	a, err := New()
	if err != nil {
		t.Fatal(err)
	}
	c := a.Capabilities()
	for _, op := range []accel.Op{accel.OpZeroScan, accel.OpHashXXH3, accel.OpXOR, accel.OpCompress, accel.OpDecompress} {
		if !c.Supports(op) {
			t.Errorf("%s not listed", op)
		}
	}
	if c.Emulated || c.CompressFormat != CompressFormat {
		t.Errorf("caps %+v", c)
	}
	c.Ops[0] = accel.Op(42)
	if a.Capabilities().Ops[0] == accel.Op(42) {
		t.Error("Capabilities shares its slice with the caller")
	}
	off, err := New(WithCompression(false))
	if err != nil {
		t.Fatal(err)
	}
	if oc := off.Capabilities(); oc.Supports(accel.OpCompress) || oc.CompressFormat != "" {
		t.Errorf("compression off but listed: %+v", oc)
	}
	if _, err := New(nil); !errors.Is(err, sdk.ErrInvalidArgument) {
		t.Errorf("nil option: %v", err)
	}
	if h := a.Health(); h.Status != sdk.Healthy || h.Detail == "" {
		t.Errorf("health %+v", h)
	}
}

func TestZeroAllocsWithReusedDst(t *testing.T) {
	in := make([]byte, 64*4096)
	for i := 0; i < len(in); i += 8192 {
		in[i+100] = byte(i)
	}
	enc := mustRun(t, variants(t)["detected"], accel.OpCompress, LevelFast, in)
	for name, a := range variants(t) {
		dst := make([]byte, 0, 2*len(in))
		for _, c := range []struct {
			op  accel.Op
			arg int64
			in  []byte
		}{
			{accel.OpZeroScan, 4096, in},
			{accel.OpHashXXH3, 4096, in},
			{accel.OpXOR, 0, in},
			{accel.OpCompress, LevelFast, in},
			{accel.OpDecompress, int64(len(in)), enc},
		} {
			allocs := testing.AllocsPerRun(20, func() {
				var err error
				if dst, err = a.Run(dst[:0], c.op, c.arg, c.in); err != nil {
					t.Fatal(err)
				}
			})
			if allocs != 0 {
				t.Errorf("%s %s: %.1f allocations per call, want 0", name, c.op, allocs)
			}
		}
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
