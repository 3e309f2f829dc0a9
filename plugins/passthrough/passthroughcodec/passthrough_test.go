package passthroughcodec_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/dwcp/dwcp/plugins/internal/codectest"
	"github.com/dwcp/dwcp/plugins/passthrough/passthroughcodec"
	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/conformance"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestConformance(t *testing.T) {
	conformance.TestCodec(t, passthroughcodec.New(), codectest.Conformance())
}

func TestIdentity(t *testing.T) {
	c := passthroughcodec.New()
	src := []byte("some bytes")
	enc, err := c.Encode([]byte("x"), src, 0)
	if err != nil || !bytes.Equal(enc, []byte("xsome bytes")) {
		t.Fatalf("Encode = %q, %v", enc, err)
	}
	if _, err := c.Decode(nil, src, len(src)-1); !errors.Is(err, sdk.ErrTooLarge) {
		t.Fatalf("Decode over limit: %v", err)
	}
	if _, err := c.Encode(nil, src, 1); !errors.Is(err, sdk.ErrInvalidArgument) {
		t.Fatalf("Encode at level 1: %v", err)
	}
}

func TestNoAllocsWhenWarm(t *testing.T) {
	codectest.SkipAllocsUnderRace(t)
	c := passthroughcodec.New()
	src := codectest.RealMemory(64 << 10)
	dst := make([]byte, 0, len(src))
	if a := testing.AllocsPerRun(20, func() { dst, _ = c.Encode(dst[:0], src, 0) }); a != 0 {
		t.Errorf("Encode allocates %v times per call", a)
	}
	if a := testing.AllocsPerRun(20, func() { dst, _ = c.Decode(dst[:0], src, len(src)) }); a != 0 {
		t.Errorf("Decode allocates %v times per call", a)
	}
}

func FuzzDecode(f *testing.F) {
	codectest.Fuzz(f, passthroughcodec.New(), []int{0})
}

func BenchmarkCodec(b *testing.B) {
	codectest.Bench(b, passthroughcodec.New(), []int{0})
}
