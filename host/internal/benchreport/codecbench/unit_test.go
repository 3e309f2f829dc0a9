package codecbench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime/debug"
	"testing"
	"time"

	"github.com/dwcp/dwcp/host/modes"
	"github.com/dwcp/dwcp/host/pagestage"
	"github.com/dwcp/dwcp/host/pipeline"
	"github.com/dwcp/dwcp/host/qemustream/streamtest"
	"github.com/dwcp/dwcp/plugins/s2/s2codec"
	"github.com/dwcp/dwcp/plugins/zstd/zstdcodec"
	"github.com/dwcp/dwcp/sdk/codec"
	"github.com/dwcp/dwcp/sdk/conformance"
)

// localSet is the session's codecs linked into the test, so that the
// harness can be tested (under -race too) without plugin processes.
func localSet() *codecSet {
	s := &codecSet{byAlgo: map[string]codec.Codec{}}
	for i, c := range []codec.Codec{s2codec.New(), zstdcodec.New()} {
		algo := c.Capabilities().Algorithm
		s.byAlgo[algo] = c
		s.list = append(s.list, pipeline.Codec{ID: uint8(i + 1), Algorithm: algo, Codec: c})
	}
	return s
}

func synthStream() []byte {
	return streamtest.Generate(streamtest.Config{Seed: 7, DirtyPasses: 2, DirtyPages: 64, Devices: 2}).Bytes()
}

// The harness carries a QEMU stream whose pages hold a pattern through the
// internet plan over a real transport session, and the same bytes through
// both relays; each delivers the input exactly.
func TestTransferAndRelays(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	set := localSet()
	inet, err := set.plan(modes.Internet)
	if err != nil {
		t.Fatal(err)
	}
	data := synthStream()
	offs, err := pageOffsets(data)
	if err != nil || len(offs) == 0 {
		t.Fatalf("page offsets: %d, %v", len(offs), err)
	}
	zeros, _ := conformance.PatternByName(conformance.PatternZeros)
	in := withPattern(nil, data, offs, zeros, make([]byte, len(offs)*pagestage.PageSize))
	if len(in) != len(data) {
		t.Fatalf("pattern stream has %d bytes, want %d", len(in), len(data))
	}
	for _, off := range offs {
		if !bytes.Equal(in[off:off+pagestage.PageSize], make([]byte, pagestage.PageSize)) {
			t.Fatalf("page at %d not replaced", off)
		}
	}
	if o2, err := pageOffsets(in); err != nil || len(o2) != len(offs) {
		t.Fatalf("pattern stream no longer parses the same: %d pages, %v", len(o2), err)
	}
	lo, err := newLoopback(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer lo.Close()
	p, err := lo.session(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	res, err := p.run(ctx, in, inet.source(set, pipeline.KindQEMU), set.dest())
	p.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !res.Summary.QEMU || res.Summary.Pages.Zero != uint64(len(offs)) {
		t.Errorf("page stage saw %+v, want %d zero pages of a QEMU stream", res.Summary.Pages, len(offs))
	}
	if r := res.Summary.Ratio(); r < 10 {
		t.Errorf("ratio %v on a stream of zero pages", r)
	}
	if len(res.Encode) == 0 {
		t.Error("no batch encode times recorded")
	}
	for _, useTLS := range []bool{false, true} {
		r, err := lo.relay(ctx, useTLS)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.run(ctx, in); err != nil {
			t.Errorf("relay (TLS %v): %v", useTLS, err)
		}
		r.Close()
	}
}

// A destination that delivers other bytes fails the measurement.
func TestCheckerRejects(t *testing.T) {
	c := &checker{want: []byte("abcdef")}
	if _, err := c.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	if err := c.complete(); err == nil {
		t.Error("3 of 6 bytes accepted as complete")
	}
	if _, err := c.Write([]byte("dex")); err == nil {
		t.Error("a wrong byte was accepted")
	}
	if _, err := c.Write([]byte("defg")); err == nil {
		t.Error("bytes past the input were accepted")
	}
}

func TestMutate(t *testing.T) {
	rm, _ := conformance.PatternByName(conformance.PatternRealMemory)
	orig := rm.Bytes(64*pagestage.PageSize, 3)
	rng := rand.New(rand.NewPCG(1, 1))
	for _, c := range []deltaCase{{0.01, false}, {0.10, false}, {0.05, true}} {
		got := bytes.Clone(orig)
		mutate(got, c, rng)
		want := int(c.frac*pagestage.PageSize + 0.5)
		for p := 0; p < len(got); p += pagestage.PageSize {
			diff, first, last := 0, -1, -1
			for i := range pagestage.PageSize {
				if got[p+i] != orig[p+i] {
					diff++
					if first < 0 {
						first = i
					}
					last = i
				}
			}
			if diff != want {
				t.Fatalf("%v: page %d has %d bytes changed, want %d", c, p/pagestage.PageSize, diff, want)
			}
			if c.clustered && last-first+1 != want {
				t.Fatalf("%v: changes span %d bytes, want one run of %d", c, last-first+1, want)
			}
		}
	}
}

// Delta against the earlier version beats full compression for lightly
// changed pages and falls back to full pages when the spans do not fit.
func TestResend(t *testing.T) {
	rm, _ := conformance.PatternByName(conformance.PatternText)
	orig := rm.Bytes(256*pagestage.PageSize, 5)
	cd := pipeline.Codec{ID: 1, Algorithm: "zstd", Codec: zstdcodec.New()}
	rng := rand.New(rand.NewPCG(2, 2))
	for _, tc := range []struct {
		c         deltaCase
		wantDelta bool
	}{{deltaCase{0.01, true}, true}, {deltaCase{0.10, false}, false}} {
		changed := bytes.Clone(orig)
		mutate(changed, tc.c, rng)
		d, err := resend(cd, 2, orig, changed, 0, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		f, err := resend(cd, 2, orig, changed, pagestage.Delta, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		if f.deltaPages != 0 {
			t.Errorf("%v: %d delta pages with delta disabled", tc.c, f.deltaPages)
		}
		if tc.wantDelta && (d.deltaPages != d.pages || d.wire*3 > f.wire) {
			t.Errorf("%v: %d of %d pages as delta, %d wire bytes against %d full", tc.c, d.deltaPages, d.pages, d.wire, f.wire)
		}
		if !tc.wantDelta && d.deltaPages != 0 {
			t.Errorf("%v: %d pages sent as delta, want none (spans over the limit)", tc.c, d.deltaPages)
		}
	}
}

func TestSpread(t *testing.T) {
	data := make([]byte, 100)
	for i := range data {
		data[i] = byte(i)
	}
	got := spread(data, 30, 10)
	want := append(append(bytes.Clone(data[0:10]), data[45:55]...), data[90:100]...)
	if !bytes.Equal(got, want) {
		t.Errorf("spread = %v, want %v", got, want)
	}
	if got := spread(data, 200, 10); len(got) != len(data) {
		t.Errorf("spread past the end gave %d bytes", len(got))
	}
}

func TestReadProcSelf(t *testing.T) {
	u, err := readProc(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if u.RSS <= 0 || u.HWM < u.RSS {
		t.Errorf("own usage %+v", u)
	}
	// Return the heap that earlier tests freed to the OS: the 64 MiB
	// below would otherwise reuse resident pages and not raise the RSS
	// (it failed so after the package's other tests).
	debug.FreeOSMemory()
	m, err := startMeter(nil)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<20)
	for i := range buf {
		buf[i] = byte(i)
	}
	use, err := m.Stop()
	if err != nil {
		t.Fatal(err)
	}
	if use.HostPeak < use.HostBefore+32<<20 {
		t.Errorf("touching 64 MiB raised the peak from %d to %d", use.HostBefore, use.HostPeak)
	}
	_ = buf[len(buf)-1]
}

func TestParseStatus(t *testing.T) {
	rss, hwm, err := parseStatus([]byte("Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t    1024 kB\nThreads: 3\n"))
	if err != nil || rss != 1024<<10 || hwm != 2048<<10 {
		t.Errorf("got %d %d %v", rss, hwm, err)
	}
	for _, bad := range []string{"", "VmRSS: 1 kB\n", "VmRSS: x kB\nVmHWM: 1 kB", "VmRSS: 1 MB\nVmHWM: 1 kB", "VmRSS: -1 kB\nVmHWM: 1 kB"} {
		if _, _, err := parseStatus([]byte(bad)); !errors.Is(err, errProcFormat) {
			t.Errorf("%q: %v, want errProcFormat", bad, err)
		}
	}
}

func TestParseStat(t *testing.T) {
	line := "1234 (a) b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4 0 100 200 300"
	cpu, err := parseStat([]byte(line))
	if err != nil || cpu != 3*time.Second {
		t.Errorf("got %v %v, want 3s", cpu, err)
	}
	for _, bad := range []string{"", "1 (x", "1 (x) S 1 2", "1 (x) S 1 2 3 4 5 6 7 8 9 10 a 5"} {
		if _, err := parseStat([]byte(bad)); !errors.Is(err, errProcFormat) {
			t.Errorf("%q: %v, want errProcFormat", bad, err)
		}
	}
}

func FuzzParseStatus(f *testing.F) {
	f.Add([]byte("VmHWM:\t  2048 kB\nVmRSS:\t    1024 kB\n"))
	f.Add([]byte("VmRSS: 99999999999999999999 kB\nVmHWM: 1 kB\n"))
	f.Add([]byte("VmRSS:\nVmHWM: kB kB\n"))
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		rss, hwm, err := parseStatus(b)
		if err == nil && (rss < 0 || hwm < 0) {
			t.Fatalf("negative sizes %d %d", rss, hwm)
		}
	})
}

func FuzzParseStat(f *testing.F) {
	f.Add([]byte("1234 (a) b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4 0 100 200 300"))
	f.Add([]byte("1 ()) S"))
	f.Add([]byte(fmt.Sprintf("1 (x) S %s", bytes.Repeat([]byte("18446744073709551615 "), 14))))
	if b, err := os.ReadFile("/proc/self/stat"); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if cpu, err := parseStat(b); err == nil && cpu < 0 {
			t.Fatalf("negative cpu time %v", cpu)
		}
	})
}
