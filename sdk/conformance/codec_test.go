package conformance_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/codec"
	"github.com/dwcp/dwcp/sdk/conformance"
)

// fault selects one way storeCodec breaks the contract.
type fault int

const (
	correct fault = iota
	panicOnDamage
	dropsPrefix
	ignoresMaxSize
	falselyDeterministic
	unwrappedErrors
	acceptsAnyLevel
	shrinkingBound
	allocatesDeclared
	silentTruncation
)

// storeCodec is a small, complete codec used to test the kit itself:
// uvarint length | kind | CRC-32 | body, where kind 1 stores the bytes and
// kind 0 stands for a run of zeros with no body (so a zip bomb exists).
// With fault == correct it honours the whole contract; each other fault
// breaks exactly one rule.
type storeCodec struct {
	fault fault
	calls atomic.Uint64
}

func (c *storeCodec) Capabilities() codec.Capabilities {
	caps := codec.Capabilities{
		Algorithm:     "store-crc32",
		Levels:        codec.LevelRange{Min: 1, Max: 3, Default: 2},
		Tiers:         [3]int{1, 2, 3},
		Deterministic: true,
		Bound:         codec.Bound{Num: 1, Den: 1, Add: binary.MaxVarintLen64 + 4},
		Features:      []string{"checksum"},
	}
	if c.fault == shrinkingBound {
		caps.Bound = codec.Bound{Num: 1, Den: 2}
	}
	return caps
}

func (c *storeCodec) Encode(dst, src []byte, level int) ([]byte, error) {
	if (level < 1 || level > 3) && c.fault != acceptsAnyLevel {
		return dst, fmt.Errorf("store encode: level %d: %w", level, sdk.ErrInvalidArgument)
	}
	if c.fault == dropsPrefix {
		dst = nil
	}
	dst = binary.AppendUvarint(dst, uint64(len(src)))
	zeros := len(src) > 0 && allZero(src)
	if zeros {
		dst = append(dst, 0)
	} else {
		dst = append(dst, 1)
	}
	sum := crc32.ChecksumIEEE(src)
	if c.fault == falselyDeterministic {
		sum ^= uint32(c.calls.Add(1))
	}
	dst = binary.LittleEndian.AppendUint32(dst, sum)
	if zeros {
		return dst, nil
	}
	return append(dst, src...), nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func (c *storeCodec) damaged(dst []byte, format string, args ...any) ([]byte, error) {
	if c.fault == panicOnDamage {
		panic(fmt.Sprintf(format, args...))
	}
	if c.fault == unwrappedErrors {
		return dst, fmt.Errorf(format, args...)
	}
	return dst, fmt.Errorf("store decode: "+format+": %w", append(args, sdk.ErrCorruptInput)...)
}

func (c *storeCodec) Decode(dst, src []byte, maxSize int) ([]byte, error) {
	if maxSize < 0 {
		return dst, fmt.Errorf("store decode: maxSize %d: %w", maxSize, sdk.ErrInvalidArgument)
	}
	n, k := binary.Uvarint(src)
	if k <= 0 || len(src) < k+5 || src[k] > 1 {
		return c.damaged(dst, "bad header")
	}
	kind := src[k]
	k++
	if c.fault == allocatesDeclared && n < 1<<30 {
		dst = slices.Grow(dst, int(n))
	}
	if n > uint64(maxSize) && c.fault != ignoresMaxSize {
		return dst, fmt.Errorf("store decode: %d bytes, limit %d: %w", n, maxSize, sdk.ErrTooLarge)
	}
	body := src[k+4:]
	sum := binary.LittleEndian.Uint32(src[k:])
	if kind == 0 {
		if len(body) != 0 || n == 0 {
			return c.damaged(dst, "bad zero run")
		}
		start := len(dst)
		dst = append(dst, make([]byte, n)...)
		if crc32.ChecksumIEEE(dst[start:]) != sum && c.fault != falselyDeterministic {
			return c.damaged(dst[:start], "checksum mismatch")
		}
		return dst, nil
	}
	if uint64(len(body)) != n && c.fault != silentTruncation {
		return c.damaged(dst, "%d bytes, header says %d", len(body), n)
	}
	if c.fault != silentTruncation && crc32.ChecksumIEEE(body) != sum && c.fault != falselyDeterministic {
		return c.damaged(dst, "checksum mismatch")
	}
	return append(dst, body...), nil
}

var fast = conformance.CodecOptions{HugeSize: 4 << 20, Goroutines: 4}

func run(t *testing.T, f fault) conformance.Report {
	t.Helper()
	return conformance.CheckCodec(context.Background(), &storeCodec{fault: f}, fast)
}

func find(r conformance.Report, name string) (conformance.Result, bool) {
	for _, res := range r.Results {
		if res.Name == name {
			return res, true
		}
	}
	return conformance.Result{}, false
}

func TestCorrectCodecPasses(t *testing.T) {
	r := run(t, correct)
	if !r.OK() {
		t.Fatalf("a correct codec failed:\n%s", r)
	}
	for _, want := range []string{"capabilities", "roundtrip/level=1", "roundtrip/level=3", "bound/level=2", "huge/level=2",
		"maxsize/limits", "maxsize/bomb", "corrupt/empty", "corrupt/truncated", "corrupt/bitflip", "corrupt/random",
		"levels/invalid", "concurrency"} {
		res, ok := find(r, want)
		if !ok {
			t.Errorf("no %q result in:\n%s", want, r)
		} else if res.Status != conformance.StatusPass {
			t.Errorf("%s: %s %s", want, res.Status, res.Message)
		}
	}
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	if s := r.String(); !strings.Contains(s, "verdict: PASS") {
		t.Fatalf("verdict line missing:\n%s", s)
	}
}

// Each broken codec must fail the check that covers its fault, with a
// message naming the problem.
func TestBrokenCodecsFail(t *testing.T) {
	cases := []struct {
		fault fault
		check string
		says  string
	}{
		{panicOnDamage, "corrupt/truncated", "panic:"},
		{panicOnDamage, "corrupt/bitflip", "panic:"},
		{dropsPrefix, "roundtrip/level=2", "did not preserve dst"},
		{ignoresMaxSize, "maxsize/limits", "sdk.ErrTooLarge"},
		{falselyDeterministic, "roundtrip/level=1", "Deterministic is set"},
		{falselyDeterministic, "concurrency", "differs from the sequential"},
		{unwrappedErrors, "corrupt/random", "wraps neither"},
		{acceptsAnyLevel, "levels/invalid", "sdk.ErrInvalidArgument"},
		{shrinkingBound, "capabilities", "shrinks data"},
		{shrinkingBound, "bound/level=1", "over Capabilities().Bound"},
		{allocatesDeclared, "maxsize/bomb", "allocated"},
		{silentTruncation, "corrupt/truncated", "truncated block must be an error"},
	}
	reports := map[fault]conformance.Report{}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("fault%d/%s", tc.fault, tc.check), func(t *testing.T) {
			r, ok := reports[tc.fault]
			if !ok {
				r = run(t, tc.fault)
				reports[tc.fault] = r
			}
			if r.OK() {
				t.Fatalf("report is OK for a broken codec:\n%s", r)
			}
			res, ok := find(r, tc.check)
			if !ok {
				t.Fatalf("no %q result", tc.check)
			}
			if res.Status != conformance.StatusFail || !strings.Contains(res.Message, tc.says) {
				t.Fatalf("%s: %s, want FAIL saying %q; message:\n%s", tc.check, res.Status, tc.says, res.Message)
			}
			if !strings.Contains(r.String(), "verdict: FAIL") || r.Err() == nil {
				t.Fatal("a failing report must say FAIL and return an error")
			}
		})
	}
}

// An identity codec cannot detect truncation: the kit skips that check
// instead of failing it.
type identity struct{}

func (identity) Capabilities() codec.Capabilities {
	return codec.Capabilities{Algorithm: "identity", Deterministic: true, Bound: codec.Bound{Num: 1, Den: 1}}
}

func (identity) Encode(dst, src []byte, level int) ([]byte, error) {
	if level != 0 {
		return dst, sdk.ErrInvalidArgument
	}
	return append(dst, src...), nil
}

func (identity) Decode(dst, src []byte, maxSize int) ([]byte, error) {
	if maxSize < 0 {
		return dst, sdk.ErrInvalidArgument
	}
	if len(src) > maxSize {
		return dst, sdk.ErrTooLarge
	}
	return append(dst, src...), nil
}

func TestIdentityCodec(t *testing.T) {
	r := conformance.CheckCodec(context.Background(), identity{}, fast)
	if !r.OK() {
		t.Fatalf("identity codec failed:\n%s", r)
	}
	if res, _ := find(r, "corrupt/truncated"); res.Status != conformance.StatusSkip {
		t.Fatalf("truncation check on an identity codec: %s %s", res.Status, res.Message)
	}
}

// A codec whose Capabilities panics is reported, not fatal.
type panicky struct{ identity }

func (panicky) Capabilities() codec.Capabilities { panic("no capabilities today") }

func TestPanickingCapabilities(t *testing.T) {
	r := conformance.CheckCodec(context.Background(), panicky{}, fast)
	res, ok := find(r, "capabilities")
	if !ok || res.Status != conformance.StatusFail || !strings.Contains(res.Message, "no capabilities today") {
		t.Fatalf("got %+v", res)
	}
	if len(r.Results) != 1 {
		t.Fatalf("without capabilities nothing else can run; got %d results", len(r.Results))
	}
}

func TestCanceledContextSkips(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r := conformance.CheckCodec(ctx, &storeCodec{}, fast)
	p, f, s := r.Counts()
	if p != 0 || f != 0 || s != len(r.Results) {
		t.Fatalf("canceled run: %d passed, %d failed, %d skipped of %d", p, f, s, len(r.Results))
	}
	if r.OK() {
		t.Fatal("a run that verified nothing must not be OK")
	}
}

// The subtest wrapper runs the same checks.
func TestTestCodec(t *testing.T) {
	conformance.TestCodec(t, &storeCodec{}, fast)
}

func TestReportMergeAndString(t *testing.T) {
	var r conformance.Report
	r.Subject = "x"
	r.Merge("shm", conformance.Report{Results: []conformance.Result{{Name: "a", Status: conformance.StatusPass}}})
	r.Merge("grpc", conformance.Report{Results: []conformance.Result{{Name: "a", Status: conformance.StatusFail, Message: "line1\nline2"}}})
	if r.Results[0].Name != "shm/a" || r.Results[1].Name != "grpc/a" {
		t.Fatalf("names: %q %q", r.Results[0].Name, r.Results[1].Name)
	}
	s := r.String()
	for _, want := range []string{"conformance: x", "PASS  shm/a", "FAIL  grpc/a", "        line2", "verdict: FAIL (1 passed, 1 failed, 0 skipped)"} {
		if !strings.Contains(s, want) {
			t.Errorf("missing %q in:\n%s", want, s)
		}
	}
	if err := r.Err(); err == nil || !strings.Contains(err.Error(), "grpc/a") {
		t.Fatalf("Err = %v", err)
	}
}

func TestErrorsWrapped(t *testing.T) {
	// The fixture itself must classify, or the tests above prove nothing.
	c := &storeCodec{}
	if _, err := c.Decode(nil, []byte{5}, 10); !errors.Is(err, sdk.ErrCorruptInput) {
		t.Fatal(err)
	}
	enc, _ := c.Encode(nil, []byte("abc"), 1)
	out, err := c.Decode(nil, enc, 3)
	if err != nil || !bytes.Equal(out, []byte("abc")) {
		t.Fatal(out, err)
	}
}

func TestReportJSON(t *testing.T) {
	r := conformance.Report{Subject: "s", Results: []conformance.Result{{Name: "a", Status: conformance.StatusSkip, Message: "m"}}}
	b, err := json.Marshal(r)
	if err != nil || !strings.Contains(string(b), `"Status":"SKIP"`) {
		t.Fatalf("%s, %v", b, err)
	}
	var back conformance.Report
	if err := json.Unmarshal(b, &back); err != nil || back.Results[0].Status != conformance.StatusSkip {
		t.Fatalf("%+v, %v", back, err)
	}
}
