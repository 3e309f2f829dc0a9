package conformance_test

import (
	"context"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/dwcp/dwcp/sdk/conformance"
	"github.com/dwcp/dwcp/sdk/conformance/internal/refaccel"
	"go.uber.org/goleak"
)

func accelReport(t *testing.T, f refaccel.Fault) conformance.Report {
	t.Helper()
	return conformance.CheckAccelerator(context.Background(), &refaccel.Accel{Fault: f}, conformance.AccelOptions{Goroutines: 4})
}

func resultNamed(r conformance.Report, name string) (conformance.Result, bool) {
	for _, res := range r.Results {
		if res.Name == name {
			return res, true
		}
	}
	return conformance.Result{}, false
}

func TestCorrectAcceleratorPasses(t *testing.T) {
	defer goleak.VerifyNone(t)
	r := accelReport(t, refaccel.FaultNone)
	if !r.OK() {
		t.Fatalf("the reference accelerator fails:\n%s", r)
	}
	// The checks for listed ops ran, and none for the unlisted hash.
	for _, name := range []string{"capabilities", "unsupported", "zero-scan/reference", "zero-scan/bad-length", "xor/reference",
		"xor/bad-length", "compress/roundtrip", "compress/limits", "compress/bomb", "compress/truncated", "compress/garbage",
		"compress/invalid-level", "robustness", "concurrency"} {
		if res, ok := resultNamed(r, name); !ok || res.Status != conformance.StatusPass {
			t.Errorf("check %s: %+v (present %v)", name, res, ok)
		}
	}
	if _, ok := resultNamed(r, "hash/known-answers"); ok {
		t.Error("hash checks ran for an accelerator that does not list the hash")
	}
}

func TestBrokenAcceleratorsFail(t *testing.T) {
	defer goleak.VerifyNone(t)
	cases := []struct {
		fault refaccel.Fault
		check string
		says  string
	}{
		{refaccel.FaultZeroFirstLine, "zero-scan/reference", "differs from the reference"},
		{refaccel.FaultDropsPrefix, "zero-scan/reference", "did not preserve dst"},
		{refaccel.FaultPanicXOR, "xor/reference", "panic: refaccel: xor of a large block"},
		{refaccel.FaultAcceptsUnlisted, "unsupported", "hash-xxh3-128 (arg 4096, 4096 input bytes) succeeded"},
		{refaccel.FaultPlainErrors, "zero-scan/bad-length", "wraps none of"},
		{refaccel.FaultPlainErrors, "xor/bad-length", "wraps none of"},
		{refaccel.FaultNoLimit, "compress/limits", "must fail with an error wrapping \"output exceeds limit\""},
		{refaccel.FaultNoLimit, "compress/bomb", "succeeded"},
		{refaccel.FaultSilentTruncation, "compress/truncated", "a truncated block must fail"},
		{refaccel.FaultFNVHash, "hash/known-answers", "want 3ee8dc4f9e7ee49593d76fe148c689ba"},
	}
	for _, c := range cases {
		r := accelReport(t, c.fault)
		res, ok := resultNamed(r, c.check)
		if !ok || res.Status != conformance.StatusFail || !strings.Contains(res.Message, c.says) {
			t.Errorf("fault %d: check %s = %+v (present %v); want FAIL saying %q", c.fault, c.check, res, ok, c.says)
		}
		if r.OK() {
			t.Errorf("fault %d: report OK", c.fault)
		}
	}
	// FNV-128a has every property the kit can test without XXH3: only the
	// known answers tell it apart.
	r := accelReport(t, refaccel.FaultFNVHash)
	if res, _ := resultNamed(r, "hash/properties"); res.Status != conformance.StatusPass {
		t.Errorf("hash/properties on FNV: %+v", res)
	}
}

func TestAcceleratorCanceledContextSkips(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r := conformance.CheckAccelerator(ctx, &refaccel.Accel{}, conformance.AccelOptions{})
	if _, f, s := r.Counts(); f != 0 || s != len(r.Results) || r.OK() {
		t.Fatalf("canceled run:\n%s", r)
	}
}

func TestTestAccelerator(t *testing.T) {
	conformance.TestAccelerator(t, &refaccel.Accel{}, conformance.AccelOptions{Goroutines: 2})
}

// buildRefPlugin builds the reference accelerator as a plugin binary.
func buildRefPlugin(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "refaccel")
	cmd := exec.Command("go", "build", "-o", bin, "./testdata/refaccelplugin")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func TestAcceleratorBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and launches a plugin binary")
	}
	defer goleak.VerifyNone(t)
	bin := buildRefPlugin(t)

	t.Run("correct", func(t *testing.T) {
		r := conformance.CheckAcceleratorBinary(t.Context(), bin, conformance.AccelOptions{Goroutines: 2})
		if !r.OK() {
			t.Fatalf("reference plugin fails:\n%s", r)
		}
		for _, name := range []string{"describe", "shm/launch", "shm/fingerprint", "shm/zero-scan/reference", "shm/close", "grpc/launch", "grpc/compress/bomb", "grpc/close"} {
			if res, ok := resultNamed(r, name); !ok || res.Status != conformance.StatusPass {
				t.Errorf("%s: %+v", name, res)
			}
		}
		if res, _ := resultNamed(r, "grpc/launch"); !strings.Contains(res.Message, "data plane grpc") {
			t.Errorf("grpc/launch: %q", res.Message)
		}
	})
	t.Run("broken over the boundary", func(t *testing.T) {
		t.Setenv("REFACCEL_FAULT", strconv.Itoa(int(refaccel.FaultZeroFirstLine)))
		r := conformance.CheckAcceleratorBinary(t.Context(), bin, conformance.AccelOptions{Goroutines: 2})
		for _, name := range []string{"shm/zero-scan/reference", "grpc/zero-scan/reference"} {
			if res, _ := resultNamed(r, name); res.Status != conformance.StatusFail {
				t.Errorf("%s: %+v", name, res)
			}
		}
	})
	t.Run("emulated but unlabelled", func(t *testing.T) {
		t.Setenv("REFACCEL_FAULT", strconv.Itoa(int(refaccel.FaultEmulated)))
		r := conformance.CheckAcceleratorBinary(t.Context(), bin, conformance.AccelOptions{Goroutines: 2})
		if res, _ := resultNamed(r, "shm/fingerprint"); res.Status != conformance.StatusFail || !strings.Contains(res.Message, "must be named as one") {
			t.Errorf("fingerprint: %+v", res)
		}
		t.Setenv("REFACCEL_SUMMARY", "EMULATED stand-in")
		r = conformance.CheckAcceleratorBinary(t.Context(), bin, conformance.AccelOptions{Goroutines: 2})
		if !r.OK() {
			t.Errorf("labelled emulated plugin fails:\n%s", r)
		}
	})
	t.Run("not a plugin", func(t *testing.T) {
		r := conformance.CheckAcceleratorBinary(t.Context(), "/bin/true", conformance.AccelOptions{})
		if r.OK() {
			t.Fatalf("/bin/true passes:\n%s", r)
		}
		if res, _ := resultNamed(r, "describe"); res.Status != conformance.StatusFail {
			t.Errorf("describe: %+v", res)
		}
	})
	t.Run("subtests", func(t *testing.T) { conformance.TestAcceleratorBinary(t, bin, conformance.AccelOptions{Goroutines: 2}) })
}
