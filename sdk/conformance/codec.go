// Package conformance is the test kit a DWCP plugin author runs in their own
// `go test`: it drives a plugin through the whole contract of its interface
// (in-process, and as a built binary through the plugin boundary) and says
// in plain words what is wrong. It also exports the deterministic data
// patterns that the project's benchmarks reuse.
//
// It owns the checks and the patterns. It must not depend on anything but
// the standard library and the SDK's own packages, and it must never let a
// misbehaving plugin panic the test binary: panics are recovered and
// reported with their stack.
package conformance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/codec"
)

// CodecOptions tunes the codec suite. The zero value runs the full suite.
type CodecOptions struct {
	// HugeSize is the size of the largest round trip and of the zip bomb:
	// 0 means 32 MiB (4 MiB under `go test -short` in TestCodec and
	// TestCodecBinary); a negative value skips the huge round trip and
	// uses a 4 MiB bomb.
	HugeSize int
	// Seed selects the pattern data; 0 means the kit's fixed default.
	Seed uint64
	// Goroutines run the concurrency check; 0 means 8.
	Goroutines int
	// MaxLevels: a level range with more levels than this is sampled (min,
	// default, max, the tier levels and the midpoint) for the 1 MiB round
	// trips; 0 means 12. The huge round trip and the concurrency mix always
	// run at the key levels only: min, default and the three tiers.
	MaxLevels int
	// Subject names the codec in the report; empty means derived from
	// Capabilities().Algorithm.
	Subject string
}

const (
	defaultHugeSize = 32 << 20
	defaultSeed     = 0x44574350 // "DWCP"
	// roundTripSizes are the block sizes every pattern is round-tripped
	// at: empty, one byte, a page, a typical batch, a large block.
	maxRoundTrip = 1 << 20
)

var roundTripSizes = []int{0, 1, 4 << 10, 64 << 10, maxRoundTrip}

// thoroughMax is the largest round trip that is also repeated into a dst
// with garbage spare capacity and checked for determinism; larger blocks
// add run time, not coverage, to those two checks.
const thoroughMax = 64 << 10

func (o CodecOptions) withDefaults() CodecOptions {
	if o.HugeSize == 0 {
		o.HugeSize = defaultHugeSize
	}
	if o.Seed == 0 {
		o.Seed = defaultSeed
	}
	if o.Goroutines <= 0 {
		o.Goroutines = 8
	}
	if o.MaxLevels <= 0 {
		o.MaxLevels = 12
	}
	return o
}

// CheckCodec runs every codec check against c and returns the report.
// It never panics on a misbehaving codec. ctx ends the run early; checks not
// yet run are reported as skipped.
func CheckCodec(ctx context.Context, c codec.Codec, opts CodecOptions) Report {
	suite, subject := newCodecSuite(c, opts)
	return runAll(ctx, subject, suite.checks())
}

// TestCodec runs the codec checks as subtests of t (one per check, grouped
// as "roundtrip/level=3" etc.). Pass at most one CodecOptions.
func TestCodec(t *testing.T, c codec.Codec, opts ...CodecOptions) {
	t.Helper()
	suite, _ := newCodecSuite(c, testOptions(opts))
	runTests(t, suite.checks())
}

// testOptions picks the options of a Test* call: the first given, with a
// smaller huge block under -short.
func testOptions(opts []CodecOptions) CodecOptions {
	var o CodecOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	if testing.Short() && o.HugeSize == 0 {
		o.HugeSize = 4 << 20
	}
	return o
}

// codecSuite holds what the checks share: the codec, its capabilities as
// read once, and the pattern data generated once.
type codecSuite struct {
	c      codec.Codec
	caps   codec.Capabilities
	capErr error // a panic in Capabilities, reported by the first check
	opts   CodecOptions
	levels []int
	data   map[string][]byte // pattern name → maxRoundTrip bytes
	order  []string

	hugeOnce sync.Once
	huge     []byte
}

func newCodecSuite(c codec.Codec, opts CodecOptions) (*codecSuite, string) {
	s := &codecSuite{c: c, opts: opts.withDefaults(), data: map[string][]byte{}}
	s.caps, s.capErr = capabilities(c)
	for _, p := range Patterns() {
		s.data[p.Name] = p.Bytes(maxRoundTrip, s.opts.Seed)
		s.order = append(s.order, p.Name)
	}
	if s.capErr == nil {
		s.levels = sampleLevels(s.caps, s.opts.MaxLevels)
	}
	subject := s.opts.Subject
	if subject == "" {
		subject = fmt.Sprintf("codec %q (in-process)", s.caps.Algorithm)
	}
	return s, subject
}

func (s *codecSuite) checks() []check {
	cs := []check{{"capabilities", s.checkCapabilities}}
	if s.capErr != nil || !validLevels(s.caps.Levels) {
		// Without a usable level range nothing else can be driven; the
		// capabilities check says why.
		return cs
	}
	for _, l := range s.levels {
		cs = append(cs, check{fmt.Sprintf("roundtrip/level=%d", l), func(ctx context.Context, st *state) { s.checkRoundTrip(ctx, st, l) }})
	}
	for _, l := range s.levels {
		cs = append(cs, check{fmt.Sprintf("bound/level=%d", l), func(ctx context.Context, st *state) { s.checkBound(ctx, st, l) }})
	}
	for _, l := range s.keyLevels() {
		cs = append(cs, check{fmt.Sprintf("huge/level=%d", l), func(ctx context.Context, st *state) { s.checkHuge(ctx, st, l) }})
	}
	cs = append(cs,
		check{"maxsize/limits", s.checkMaxSize},
		check{"maxsize/bomb", s.checkBomb},
		check{"corrupt/empty", s.checkEmpty},
		check{"corrupt/truncated", s.checkTruncated},
		check{"corrupt/bitflip", s.checkBitFlips},
		check{"corrupt/random", s.checkRandom},
		check{"levels/invalid", s.checkInvalidLevels},
		check{"concurrency", s.checkConcurrency},
	)
	return cs
}

// panicError carries a panic raised inside the codec out of a call.
type panicError struct {
	value any
	stack []byte
}

func (p *panicError) Error() string { return fmt.Sprintf("panic: %v\n%s", p.value, p.stack) }

func capabilities(c codec.Codec) (caps codec.Capabilities, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = &panicError{p, debug.Stack()}
		}
	}()
	return c.Capabilities(), nil
}

func encode(c codec.Codec, dst, src []byte, level int) (out []byte, err error) {
	defer func() {
		if p := recover(); p != nil {
			out, err = nil, &panicError{p, debug.Stack()}
		}
	}()
	return c.Encode(dst, src, level)
}

func decode(c codec.Codec, dst, src []byte, maxSize int) (out []byte, err error) {
	defer func() {
		if p := recover(); p != nil {
			out, err = nil, &panicError{p, debug.Stack()}
		}
	}()
	return c.Decode(dst, src, maxSize)
}

// quoteErr quotes a one-line error and sets a multi-line one (a plugin's
// crash report with its stderr) on lines of its own.
func quoteErr(err error) string {
	msg := err.Error()
	if strings.Contains(msg, "\n") {
		return "\n" + msg + "\n"
	}
	return strconv.Quote(msg)
}

func isPanic(err error) bool {
	var pe *panicError
	return errors.As(err, &pe)
}

func validLevels(r codec.LevelRange) bool {
	return r.Min <= r.Default && r.Default <= r.Max
}

// sampleLevels returns every level when the range is small, else min,
// default, max, the tiers' levels and the midpoint, sorted and distinct.
func sampleLevels(caps codec.Capabilities, maxLevels int) []int {
	r := caps.Levels
	if !validLevels(r) {
		return nil
	}
	if int64(r.Max)-int64(r.Min) < int64(maxLevels) {
		var ls []int
		for l := r.Min; ; l++ {
			ls = append(ls, l)
			if l == r.Max {
				break
			}
		}
		return ls
	}
	ls := []int{r.Min, r.Default, r.Max, r.Min + (r.Max-r.Min)/2}
	for _, t := range caps.Tiers {
		if r.Contains(t) {
			ls = append(ls, t)
		}
	}
	slices.Sort(ls)
	return slices.Compact(ls)
}

// keyLevels are the levels the host picks without being told: min,
// default and the three tiers. The huge block and the concurrency mix run
// at these only, since a codec's slowest levels can take minutes over
// 32 MiB; the 1 MiB round trip covers every sampled level.
func (s *codecSuite) keyLevels() []int {
	ls := []int{s.caps.Levels.Min, s.caps.Levels.Default}
	for _, t := range s.caps.Tiers {
		if s.caps.Levels.Contains(t) {
			ls = append(ls, t)
		}
	}
	slices.Sort(ls)
	return slices.Compact(ls)
}

func (s *codecSuite) hasFeature(f string) bool { return slices.Contains(s.caps.Features, f) }

// prefixed returns a dst holding a recognisable prefix, with no spare
// capacity when spare is 0 (forcing the codec to grow it) or with spare
// bytes of garbage capacity (catching codecs that assume zeroed memory or
// ignore len).
func prefixed(spare int) []byte {
	const p = "dst-prefix:"
	b := make([]byte, len(p), len(p)+spare)
	copy(b, p)
	g := b[len(p):cap(b)]
	for i := range g {
		g[i] = 0xA5
	}
	return b
}

const prefixLen = len("dst-prefix:")

func prefixIntact(out []byte) bool {
	return len(out) >= prefixLen && string(out[:prefixLen]) == "dst-prefix:"
}

func (s *codecSuite) checkCapabilities(_ context.Context, st *state) {
	if s.capErr != nil {
		st.failf("Capabilities() panicked: %v", s.capErr)
		return
	}
	c := s.caps
	if c.Algorithm == "" {
		st.failf("Capabilities().Algorithm is empty: name the format (e.g. \"zstd\"); codecs with the same name must decode each other's output")
	}
	r := c.Levels
	if !validLevels(r) {
		st.failf("Capabilities().Levels = {Min:%d Max:%d Default:%d}: need Min <= Default <= Max", r.Min, r.Max, r.Default)
	}
	for t, l := range c.Tiers {
		if !r.Contains(l) {
			st.failf("Capabilities().Tiers[%s] = %d is outside Levels %d..%d", codec.Tier(t), l, r.Min, r.Max)
		}
	}
	if c.Bound.Den != 0 && c.Bound.Num < c.Bound.Den {
		st.failf("Capabilities().Bound = %d/%d·n + %d shrinks data: no codec can honour it for random input", c.Bound.Num, c.Bound.Den, c.Bound.Add)
	}
	again, err := capabilities(s.c)
	if err != nil {
		st.failf("second Capabilities() call panicked: %v", err)
	} else if fmt.Sprint(again) != fmt.Sprint(c) {
		st.failf("Capabilities() is not stable: first %+v, then %+v", c, again)
	}
	st.notef("algorithm %q, levels %d..%d (default %d), tiers local=%d regional=%d global=%d, deterministic=%v, bound %d/%d·n+%d, features %v; levels exercised %v",
		c.Algorithm, r.Min, r.Max, r.Default, c.Tiers[0], c.Tiers[1], c.Tiers[2], c.Deterministic, c.Bound.Num, c.Bound.Den, c.Bound.Add, c.Features, s.levels)
}

// roundTrip encodes src at level, checks prefix and bound, decodes with
// maxSize = len(src) and compares. When thorough, it also encodes and
// decodes a second time into a dst with garbage spare capacity (catching
// codecs that assume zeroed memory or ignore len) and checks determinism;
// the huge check skips that second pass to keep the suite fast. It returns
// the encoding, or nil after recording a failure.
func (s *codecSuite) roundTrip(st *state, what string, src []byte, level int, thorough bool) []byte {
	n := len(src)
	enc, err := encode(s.c, prefixed(0), src, level)
	if err != nil {
		st.failf("%s: Encode at level %d: %v", what, level, err)
		return nil
	}
	if !prefixIntact(enc) {
		st.failf("%s: Encode did not preserve dst: the %d bytes already in dst must stay as they are and the encoding be appended after them", what, prefixLen)
		return nil
	}
	body := enc[prefixLen:]
	if b := s.caps.Bound.Max(n); len(body) > b {
		st.failf("%s: encoding of %d bytes is %d bytes, over Capabilities().Bound.Max(%d) = %d: the host sizes buffers with Bound", what, n, len(body), n, b)
	}
	dec, err := decode(s.c, prefixed(0), body, n)
	if err != nil {
		st.failf("%s: Decode of a valid level-%d encoding with maxSize = decoded size (%d): %v", what, level, n, err)
		return nil
	}
	if !prefixIntact(dec) {
		st.failf("%s: Decode did not preserve dst's prefix", what)
		return nil
	}
	if !bytes.Equal(dec[prefixLen:], src) {
		st.failf("%s: Decode(Encode(x)) != x at level %d: %s", what, level, diff(dec[prefixLen:], src))
		return nil
	}
	if !thorough {
		return body
	}
	enc2, err := encode(s.c, prefixed(len(body)+64), src, level)
	switch {
	case err != nil:
		st.failf("%s: second Encode (dst with spare capacity) at level %d: %v", what, level, err)
	case !prefixIntact(enc2):
		st.failf("%s: Encode into a dst with spare capacity did not preserve dst's prefix", what)
	case s.caps.Deterministic && !bytes.Equal(enc2[prefixLen:], body):
		st.failf("%s: Capabilities().Deterministic is set but two encodings at level %d differ (%d vs %d bytes); unset it or make Encode deterministic", what, level, len(body), len(enc2)-prefixLen)
	}
	dec2, err := decode(s.c, prefixed(n+64), body, n)
	switch {
	case err != nil:
		st.failf("%s: Decode into a dst with spare capacity: %v", what, err)
	case !prefixIntact(dec2):
		st.failf("%s: Decode into a dst with spare capacity did not preserve its prefix", what)
	case !bytes.Equal(dec2[prefixLen:], src):
		st.failf("%s: Decode into a dst with spare (non-zero) capacity gave wrong bytes: %s", what, diff(dec2[prefixLen:], src))
	}
	return body
}

// diff describes where got and want first differ.
func diff(got, want []byte) string {
	if len(got) != len(want) {
		return fmt.Sprintf("decoded %d bytes, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			return fmt.Sprintf("first difference at byte %d: got %#02x, want %#02x", i, got[i], want[i])
		}
	}
	return "equal"
}

func (s *codecSuite) checkRoundTrip(ctx context.Context, st *state, level int) {
	var in, out int
	for _, name := range s.order {
		for _, n := range roundTripSizes {
			if ctx.Err() != nil {
				st.skipf("context ended: %v", ctx.Err())
				return
			}
			src := s.data[name][:n]
			if enc := s.roundTrip(st, fmt.Sprintf("%s %d bytes", name, n), src, level, n <= thoroughMax); enc != nil {
				in += n
				out += len(enc)
			}
		}
	}
	if out > 0 {
		st.notef("%d patterns × %d sizes: %d → %d bytes (ratio %.2f)", len(s.order), len(roundTripSizes), in, out, float64(in)/float64(out))
	}
}

// boundSizes stress the worst case: random data around block and varint
// boundaries of common formats.
var boundSizes = func() []int {
	var ns []int
	for n := 1; n <= 70; n++ {
		ns = append(ns, n)
	}
	return append(ns, 127, 128, 255, 256, 257, 4095, 4097, 16383, 16385, 65535, 65537, 131071, 131072, 131073, 262145)
}()

func (s *codecSuite) checkBound(ctx context.Context, st *state, level int) {
	rnd := s.data[PatternRandom]
	for _, n := range boundSizes {
		if ctx.Err() != nil {
			st.skipf("context ended: %v", ctx.Err())
			return
		}
		enc, err := encode(s.c, nil, rnd[:n], level)
		if err != nil {
			st.failf("Encode(%d random bytes, level %d): %v", n, level, err)
			continue
		}
		if b := s.caps.Bound.Max(n); len(enc) > b {
			st.failf("Encode(%d random bytes, level %d) = %d bytes, over Capabilities().Bound.Max(%d) = %d", n, level, len(enc), n, b)
		}
	}
}

func (s *codecSuite) hugeData() []byte {
	s.hugeOnce.Do(func() {
		p, _ := PatternByName(PatternRealMemory)
		s.huge = p.Bytes(s.opts.HugeSize, s.opts.Seed)
	})
	return s.huge
}

func (s *codecSuite) checkHuge(_ context.Context, st *state, level int) {
	if s.opts.HugeSize < 0 {
		st.skipf("disabled by CodecOptions.HugeSize < 0")
		return
	}
	src := s.hugeData()
	if enc := s.roundTrip(st, fmt.Sprintf("%s %d MiB", PatternRealMemory, len(src)>>20), src, level, false); enc != nil {
		st.notef("%d → %d bytes (ratio %.2f)", len(src), len(enc), float64(len(src))/float64(len(enc)))
	}
}

// expectTooLarge records a failure unless decoding enc with maxSize fails
// with sdk.ErrTooLarge.
func (s *codecSuite) expectTooLarge(st *state, what string, enc []byte, maxSize int) {
	out, err := decode(s.c, prefixed(0), enc, maxSize)
	switch {
	case err == nil:
		st.failf("%s: Decode with maxSize %d succeeded with %d bytes: it must stop and return an error wrapping sdk.ErrTooLarge", what, maxSize, len(out)-prefixLen)
	case isPanic(err):
		st.failf("%s: Decode with maxSize %d: %v", what, maxSize, err)
	case !errors.Is(err, sdk.ErrTooLarge):
		st.failf("%s: Decode with maxSize %d returned %s, which does not wrap sdk.ErrTooLarge", what, maxSize, quoteErr(err))
	}
}

func (s *codecSuite) checkMaxSize(ctx context.Context, st *state) {
	level := s.caps.Levels.Default
	for _, name := range []string{PatternText, PatternRandom, PatternRealMemory, PatternZeros} {
		for _, n := range []int{1, 4 << 10, 64 << 10, maxRoundTrip} {
			if ctx.Err() != nil {
				st.skipf("context ended: %v", ctx.Err())
				return
			}
			what := fmt.Sprintf("%s %d bytes", name, n)
			enc, err := encode(s.c, nil, s.data[name][:n], level)
			if err != nil {
				st.failf("%s: Encode: %v", what, err)
				continue
			}
			for _, m := range []int{n - 1, n / 2, 0} {
				if m < n {
					s.expectTooLarge(st, what, enc, m)
				}
			}
			if _, err := decode(s.c, nil, enc, n); err != nil {
				st.failf("%s: Decode with maxSize equal to the decoded size: %v", what, err)
			}
			if out, err := decode(s.c, nil, enc, -1); err == nil {
				st.failf("%s: Decode with maxSize -1 succeeded with %d bytes: a negative limit must be an error (sdk.ErrInvalidArgument or sdk.ErrTooLarge)", what, len(out))
			} else if !errIsAny(err, sdk.ErrInvalidArgument, sdk.ErrTooLarge) {
				st.failf("%s: Decode with maxSize -1 returned %s, which wraps neither sdk.ErrInvalidArgument nor sdk.ErrTooLarge", what, quoteErr(err))
			}
		}
	}
}

// bombLimit is the maxSize the zip bomb is decoded with.
const bombLimit = 64 << 10

// checkBomb decodes a highly compressible block many times larger than
// maxSize: it must fail with ErrTooLarge without allocating the full
// decoded size first. Allocation is measured across the process (host side
// only, for a plugin behind the boundary) with a generous margin, so other
// goroutines do not make the check flaky.
func (s *codecSuite) checkBomb(_ context.Context, st *state) {
	n := s.opts.HugeSize
	if n < 0 {
		n = 4 << 20
	}
	src := make([]byte, n)
	enc, err := encode(s.c, nil, src, s.caps.Levels.Max)
	if err != nil {
		st.failf("Encode(%d zero bytes, level %d): %v", n, s.caps.Levels.Max, err)
		return
	}
	src = nil
	// A pass of GC first so the measurement counts this call only.
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	s.expectTooLarge(st, fmt.Sprintf("%d zero bytes encoded to %d", n, len(enc)), enc, bombLimit)
	runtime.ReadMemStats(&after)
	allocated := after.TotalAlloc - before.TotalAlloc
	// A quarter of the bomb, and never less than 2 MiB, leaves room for
	// a decoder's working state while still catching a decoder that
	// allocates the full declared size. A transport may copy the input
	// once (the gRPC fallback does), hence len(enc) more.
	if limit := max(uint64(n/4), 2<<20) + uint64(len(enc)); allocated > limit {
		st.failf("decoding the %d-byte bomb with maxSize %d allocated %d bytes: a decoder must check the declared size (or decode with a running limit) before allocating for the whole output", n, bombLimit, allocated)
	}
	st.notef("bomb: %d zero bytes → %d encoded; Decode with maxSize %d allocated %d bytes", n, len(enc), bombLimit, allocated)
}

// corruptOK checks one decode of damaged input: no panic, an error that
// wraps sdk.ErrCorruptInput or sdk.ErrTooLarge, or a success that honours
// maxSize and dst's prefix. It returns whether Decode succeeded.
func corruptOK(st *state, what string, out []byte, err error, maxSize int) (succeeded bool) {
	switch {
	case err == nil:
		if !prefixIntact(out) {
			st.failf("%s: Decode of damaged input succeeded but did not preserve dst's prefix", what)
		} else if len(out)-prefixLen > maxSize {
			st.failf("%s: Decode of damaged input returned %d bytes, over maxSize %d", what, len(out)-prefixLen, maxSize)
		}
		return true
	case isPanic(err):
		st.failf("%s: Decode of damaged input: %v", what, err)
	case !errIsAny(err, sdk.ErrCorruptInput, sdk.ErrTooLarge):
		st.failf("%s: Decode of damaged input returned %s, which wraps neither sdk.ErrCorruptInput nor sdk.ErrTooLarge", what, quoteErr(err))
	}
	return false
}

func (s *codecSuite) checkEmpty(_ context.Context, st *state) {
	enc, err := encode(s.c, nil, nil, s.caps.Levels.Default)
	if err != nil {
		st.failf("Encode of an empty block: %v", err)
		return
	}
	out, err := decode(s.c, prefixed(0), nil, maxRoundTrip)
	if len(enc) == 0 {
		// The codec encodes nothing as nothing, so empty input is valid.
		switch {
		case err != nil:
			st.failf("Encode of an empty block gives 0 bytes, so Decode of 0 bytes must give an empty block; it returned %v", err)
		case !prefixIntact(out) || len(out) != prefixLen:
			st.failf("Decode of 0 bytes (the encoding of an empty block) must append nothing; got %d bytes", len(out)-prefixLen)
		}
		return
	}
	if err == nil {
		st.failf("Decode of 0 bytes succeeded with %d bytes, but this codec encodes an empty block as %d bytes: empty input is damaged and must be an error wrapping sdk.ErrCorruptInput", len(out)-prefixLen, len(enc))
		return
	}
	corruptOK(st, "empty input", out, err, maxRoundTrip)
}

// damageSources are the valid encodings corrupted by the truncation and
// bit-flip checks: several patterns and sizes at the default level.
func (s *codecSuite) damageSources(st *state) (srcs, encs [][]byte, identity bool) {
	identity = true
	for _, c := range []struct {
		name string
		n    int
	}{{PatternText, 64 << 10}, {PatternRealMemory, 64 << 10}, {PatternRandom, 4 << 10}, {PatternZeros, 64 << 10}, {PatternRepeating, 4 << 10}, {PatternSparse, 16 << 10}} {
		src := s.data[c.name][:c.n]
		enc, err := encode(s.c, nil, src, s.caps.Levels.Default)
		if err != nil {
			st.failf("Encode(%s %d bytes): %v", c.name, c.n, err)
			continue
		}
		identity = identity && bytes.Equal(enc, src)
		srcs = append(srcs, src)
		encs = append(encs, enc)
	}
	return srcs, encs, identity
}

// cutPoints returns the damage positions in a block of n bytes: all of
// them for small blocks, else the head, the tail and evenly spaced points.
func cutPoints(n, head, tail, spaced int) []int {
	if n <= head+tail+spaced {
		ps := make([]int, n)
		for i := range ps {
			ps[i] = i
		}
		return ps
	}
	var ps []int
	for i := range head {
		ps = append(ps, i)
	}
	for i := range spaced {
		ps = append(ps, head+(n-head-tail)*i/spaced)
	}
	for i := n - tail; i < n; i++ {
		ps = append(ps, i)
	}
	return ps
}

func (s *codecSuite) checkTruncated(ctx context.Context, st *state) {
	srcs, encs, identity := s.damageSources(st)
	if st.failed() {
		return
	}
	if identity {
		st.skipf("Encode returns its input unchanged (an identity codec): a truncated block is a valid shorter block, so truncation cannot be detected")
		return
	}
	cases, accepted := 0, 0
	for i, enc := range encs {
		for _, cut := range cutPoints(len(enc), 64, 16, 64) {
			if cut == 0 {
				// Empty input is the corrupt/empty check's business: it
				// is valid for a codec that encodes nothing as nothing.
				continue
			}
			if ctx.Err() != nil {
				st.skipf("context ended: %v", ctx.Err())
				return
			}
			what := fmt.Sprintf("encoding of %d bytes cut to %d of %d bytes", len(srcs[i]), cut, len(enc))
			out, err := decode(s.c, prefixed(0), enc[:cut], len(srcs[i]))
			cases++
			if corruptOK(st, what, out, err, len(srcs[i])) {
				accepted++
				st.failf("%s: Decode succeeded with %d bytes; a truncated block must be an error wrapping sdk.ErrCorruptInput (carry the length or an end marker in the format)", what, len(out)-prefixLen)
			}
		}
	}
	st.notef("%d truncations, all rejected", cases-accepted)
}

func (s *codecSuite) checkBitFlips(ctx context.Context, st *state) {
	srcs, encs, _ := s.damageSources(st)
	if st.failed() {
		return
	}
	checksum := s.hasFeature("checksum")
	cases, rejected, same, silent := 0, 0, 0, 0
	for i, enc := range encs {
		bad := bytes.Clone(enc)
		for _, pos := range cutPoints(len(enc), 128, 64, 128) {
			if ctx.Err() != nil {
				st.skipf("context ended: %v", ctx.Err())
				return
			}
			bit := byte(1) << (pos % 8)
			bad[pos] ^= bit
			what := fmt.Sprintf("encoding of %d bytes with bit %d of byte %d flipped", len(srcs[i]), pos%8, pos)
			out, err := decode(s.c, prefixed(0), bad, len(srcs[i]))
			bad[pos] ^= bit
			cases++
			if !corruptOK(st, what, out, err, len(srcs[i])) {
				rejected++
				continue
			}
			if bytes.Equal(out[prefixLen:], srcs[i]) {
				same++
				continue
			}
			silent++
			if checksum {
				st.failf("%s: Decode succeeded with different bytes, but the codec lists the \"checksum\" feature: damage must be detected", what)
			}
		}
	}
	st.notef("%d bit flips: %d rejected, %d decoded to the original, %d decoded to other bytes without error (checksum feature: %v)", cases, rejected, same, silent, checksum)
}

func (s *codecSuite) checkRandom(ctx context.Context, st *state) {
	r := newRNG(s.opts.Seed, 0x52414e44)
	// Valid headers with random tails get past magic numbers and length
	// prefixes, where fully random bytes would be rejected at once.
	var heads [][]byte
	for _, name := range s.order {
		if enc, err := encode(s.c, nil, s.data[name][:64<<10], s.caps.Levels.Default); err == nil {
			heads = append(heads, enc)
		}
	}
	const maxSize = 1 << 20
	buf := make([]byte, 64<<10)
	cases := 0
	for i := range 400 {
		if ctx.Err() != nil {
			st.skipf("context ended: %v", ctx.Err())
			return
		}
		n := 1 + r.intn(2048)
		if i%50 == 0 {
			n = len(buf)
		}
		in := buf[:n]
		r.fill(in)
		what := fmt.Sprintf("%d random bytes (case %d)", n, i)
		if i%2 == 1 && len(heads) > 0 {
			h := heads[r.intn(len(heads))]
			k := min(len(h), n, 1+r.intn(32))
			copy(in, h[:k])
			what = fmt.Sprintf("a valid %d-byte header followed by %d random bytes (case %d)", k, n-k, i)
		}
		out, err := decode(s.c, prefixed(0), in, maxSize)
		corruptOK(st, what, out, err, maxSize)
		cases++
	}
	for _, fill := range []byte{0x00, 0xff} {
		in := bytes.Repeat([]byte{fill}, 4096)
		out, err := decode(s.c, prefixed(0), in, maxSize)
		corruptOK(st, fmt.Sprintf("4096 bytes of %#02x", fill), out, err, maxSize)
		cases++
	}
	st.notef("%d random and garbage inputs decoded without panic", cases)
}

func (s *codecSuite) checkInvalidLevels(_ context.Context, st *state) {
	r := s.caps.Levels
	var bad []int
	if r.Min > math.MinInt {
		bad = append(bad, r.Min-1, math.MinInt)
	}
	if r.Max < math.MaxInt {
		bad = append(bad, r.Max+1, math.MaxInt)
	}
	src := s.data[PatternText][:4<<10]
	for _, l := range bad {
		out, err := encode(s.c, nil, src, l)
		switch {
		case err == nil:
			st.failf("Encode at level %d (outside %d..%d) succeeded with %d bytes: it must return an error wrapping sdk.ErrInvalidArgument", l, r.Min, r.Max, len(out))
		case isPanic(err):
			st.failf("Encode at level %d: %v", l, err)
		case !errors.Is(err, sdk.ErrInvalidArgument):
			st.failf("Encode at level %d (outside %d..%d) returned %s, which does not wrap sdk.ErrInvalidArgument", l, r.Min, r.Max, quoteErr(err))
		}
	}
}

// checkConcurrency runs Goroutines goroutines, each round-tripping a
// deterministic mix of patterns, sizes and levels with reused buffers, and
// compares every result against a sequential run.
func (s *codecSuite) checkConcurrency(ctx context.Context, st *state) {
	type job struct {
		name  string
		n     int
		level int
	}
	sizes := []int{0, 1, 4 << 10, 64 << 10, 256 << 10}
	levels := s.keyLevels()
	var jobs []job
	for i, name := range s.order {
		for j, n := range sizes {
			jobs = append(jobs, job{name, n, levels[(i+j)%len(levels)]})
		}
	}
	want := make([][]byte, len(jobs))
	for i, j := range jobs {
		enc, err := encode(s.c, nil, s.data[j.name][:j.n], j.level)
		if err != nil {
			st.failf("sequential Encode(%s %d bytes, level %d): %v", j.name, j.n, j.level, err)
			return
		}
		want[i] = enc
	}
	const rounds = 1
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		errs []string
	)
	report := func(format string, args ...any) {
		mu.Lock()
		errs = append(errs, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	for g := range s.opts.Goroutines {
		wg.Go(func() {
			var encBuf, decBuf []byte
			for k := range rounds * len(jobs) {
				if ctx.Err() != nil {
					return
				}
				ji := (g*7 + k) % len(jobs)
				j := jobs[ji]
				src := s.data[j.name][:j.n]
				var err error
				encBuf, err = encode(s.c, encBuf[:0], src, j.level)
				if err != nil {
					report("goroutine %d: Encode(%s %d bytes, level %d): %v", g, j.name, j.n, j.level, err)
					return
				}
				if s.caps.Deterministic && !bytes.Equal(encBuf, want[ji]) {
					report("goroutine %d: concurrent Encode(%s %d bytes, level %d) differs from the sequential one although Deterministic is set", g, j.name, j.n, j.level)
				}
				decBuf, err = decode(s.c, decBuf[:0], encBuf, j.n)
				if err != nil {
					report("goroutine %d: Decode(%s %d bytes, level %d): %v", g, j.name, j.n, j.level, err)
					return
				}
				if !bytes.Equal(decBuf, src) {
					report("goroutine %d: concurrent round trip of %s %d bytes at level %d: %s", g, j.name, j.n, j.level, diff(decBuf, src))
				}
			}
		})
	}
	wg.Wait()
	for _, e := range errs {
		st.failf("%s", e)
	}
	if ctx.Err() != nil && !st.failed() {
		st.skipf("context ended: %v", ctx.Err())
		return
	}
	st.notef("%d goroutines × %d round trips each", s.opts.Goroutines, rounds*len(jobs))
}
