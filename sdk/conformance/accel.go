package conformance

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/accel"
)

// AccelOptions tunes the accelerator suite. The zero value runs the full
// suite.
type AccelOptions struct {
	// PageSize is the page size the page operations are driven with; 0
	// (or anything under 64 bytes, too small to tell a partial page from
	// a whole one in every check) means 4096.
	PageSize int
	// CompressLevels are the OpCompress levels the accelerator must accept
	// (the arg of OpCompress); nil means {1}.
	CompressLevels []int64
	// Seed selects the pattern data; 0 means the kit's fixed default.
	Seed uint64
	// Goroutines run the concurrency check; 0 means 8.
	Goroutines int
	// Subject names the accelerator in the report; empty means
	// "accelerator (in-process)".
	Subject string
}

func (o AccelOptions) withDefaults() AccelOptions {
	if o.PageSize < 64 {
		o.PageSize = PageSize
	}
	if len(o.CompressLevels) == 0 {
		o.CompressLevels = []int64{1}
	}
	if o.Seed == 0 {
		o.Seed = defaultSeed
	}
	if o.Goroutines <= 0 {
		o.Goroutines = 8
	}
	return o
}

// allAccelOps are the operations protocol v1 defines.
var allAccelOps = []accel.Op{accel.OpZeroScan, accel.OpHashXXH3, accel.OpXOR, accel.OpCompress, accel.OpDecompress}

// CheckAccelerator runs every accelerator check against a and returns the
// report. Each listed operation is compared with a reference computed by
// the kit (zero scan and XOR exactly; XXH3-128 by known answers from the
// reference implementation and by its properties; compression by round
// trip); unlisted operations must yield sdk.ErrUnsupported; bad lengths,
// damaged compressed blocks and concurrent use are exercised. It never
// panics on a misbehaving accelerator.
func CheckAccelerator(ctx context.Context, a accel.Accelerator, opts AccelOptions) Report {
	s, subject := newAccelSuite(a, opts)
	return runAll(ctx, subject, s.checks())
}

// TestAccelerator runs the accelerator checks as subtests of t. Pass at
// most one AccelOptions.
func TestAccelerator(t *testing.T, a accel.Accelerator, opts ...AccelOptions) {
	t.Helper()
	var o AccelOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	s, _ := newAccelSuite(a, o)
	runTests(t, s.checks())
}

type accelSuite struct {
	a accel.Accelerator
	// remote is set when a is a plugin behind the boundary: allocations
	// measured here are the host's transport, not the plugin's decoder.
	remote bool
	caps   accel.Capabilities
	capErr error
	opts   AccelOptions
	ps     int
	// pages holds 64 pages of every pattern, back to back, plus pages
	// crafted to differ from zero in exactly one byte.
	pages   []byte
	single  []byte
	pattern map[string][]byte
}

// accelPatternPages is how many pages of each pattern the suite uses.
const accelPatternPages = 64

func newAccelSuite(a accel.Accelerator, opts AccelOptions) (*accelSuite, string) {
	s := &accelSuite{a: a, opts: opts.withDefaults(), pattern: map[string][]byte{}}
	s.ps = s.opts.PageSize
	s.caps, s.capErr = accelCapabilities(a)
	for _, p := range Patterns() {
		b := p.Bytes(accelPatternPages*s.ps, s.opts.Seed)
		s.pattern[p.Name] = b
		s.pages = append(s.pages, b...)
	}
	s.single = singleBytePages(s.ps)
	subject := s.opts.Subject
	if subject == "" {
		subject = "accelerator (in-process)"
	}
	return s, subject
}

// singleBytePages returns pages that are zero except for one byte, at
// positions covering the page's start, end, every vector-width boundary
// and a sweep, with the low and the high bit as values; page 0 is zero.
func singleBytePages(ps int) []byte {
	pos := map[int]bool{}
	for _, w := range []int{1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048} {
		for _, p := range []int{w - 1, w, w + 1, ps - w, ps - w - 1} {
			if p >= 0 && p < ps {
				pos[p] = true
			}
		}
	}
	for p := 0; p < ps; p += 97 {
		pos[p] = true
	}
	var ps2 []int
	for p := range pos {
		ps2 = append(ps2, p)
	}
	slices.Sort(ps2)
	out := make([]byte, ps, (1+2*len(ps2))*ps)
	for i, p := range ps2 {
		page := make([]byte, ps)
		page[p] = 0x01
		if i%2 == 1 {
			page[p] = 0x80
		}
		out = append(out, page...)
		page[p] = 0xFF
		out = append(out, page...)
	}
	return out
}

func (s *accelSuite) checks() []check {
	cs := []check{{"capabilities", s.checkCapabilities}}
	if s.capErr != nil {
		return cs
	}
	cs = append(cs, check{"unsupported", s.checkUnsupported})
	if s.caps.Supports(accel.OpZeroScan) {
		cs = append(cs,
			check{"zero-scan/reference", s.checkZeroScan},
			check{"zero-scan/bad-length", func(ctx context.Context, st *state) { s.checkPageLengths(st, accel.OpZeroScan) }},
		)
	}
	if s.caps.Supports(accel.OpHashXXH3) {
		cs = append(cs,
			check{"hash/known-answers", s.checkHashKnown},
			check{"hash/properties", s.checkHashProperties},
			check{"hash/bad-length", func(ctx context.Context, st *state) { s.checkPageLengths(st, accel.OpHashXXH3) }},
		)
	}
	if s.caps.Supports(accel.OpXOR) {
		cs = append(cs,
			check{"xor/reference", s.checkXOR},
			check{"xor/bad-length", s.checkXORLengths},
		)
	}
	if s.caps.Supports(accel.OpCompress) && s.caps.Supports(accel.OpDecompress) {
		cs = append(cs,
			check{"compress/roundtrip", s.checkCompressRoundTrip},
			check{"compress/limits", s.checkDecompressLimits},
			check{"compress/bomb", s.checkDecompressBomb},
			check{"compress/truncated", s.checkDecompressTruncated},
			check{"compress/garbage", s.checkDecompressGarbage},
			check{"compress/invalid-level", s.checkCompressInvalidLevel},
		)
	}
	cs = append(cs,
		check{"robustness", s.checkRobustness},
		check{"concurrency", s.checkAccelConcurrency},
	)
	return cs
}

func accelCapabilities(a accel.Accelerator) (caps accel.Capabilities, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = &panicError{p, debug.Stack()}
		}
	}()
	return a.Capabilities(), nil
}

// run calls a.Run, turning a panic into an error the checks report.
func (s *accelSuite) run(dst []byte, op accel.Op, arg int64, in []byte) (out []byte, err error) {
	defer func() {
		if p := recover(); p != nil {
			out, err = nil, &panicError{p, debug.Stack()}
		}
	}()
	return s.a.Run(dst, op, arg, in)
}

// runFresh runs op into a prefixed dst and checks the prefix: it returns
// the appended bytes, or records a failure and returns ok=false.
func (s *accelSuite) runFresh(st *state, what string, op accel.Op, arg int64, in []byte, spare int) ([]byte, bool) {
	out, err := s.run(prefixed(spare), op, arg, in)
	if err != nil {
		st.failf("%s: %s (arg %d, %d input bytes): %v", what, op, arg, len(in), err)
		return nil, false
	}
	if !prefixIntact(out) {
		st.failf("%s: %s did not preserve dst: the %d bytes already in dst must stay and the result be appended after them", what, op, prefixLen)
		return nil, false
	}
	return out[prefixLen:], true
}

// expectErr records a failure unless op fails with an error wrapping one of
// want, leaving dst's prefix in place.
func (s *accelSuite) expectErr(st *state, what string, op accel.Op, arg int64, in []byte, want ...error) {
	out, err := s.run(prefixed(0), op, arg, in)
	names := make([]string, len(want))
	for i, w := range want {
		names[i] = fmt.Sprintf("%q", w)
	}
	switch {
	case err == nil:
		st.failf("%s: %s (arg %d, %d input bytes) succeeded with %d bytes; it must fail with an error wrapping %s", what, op, arg, len(in), len(out)-prefixLen, strings.Join(names, " or "))
	case isPanic(err):
		st.failf("%s: %s: %v", what, op, err)
	case !errIsAny(err, want...):
		st.failf("%s: %s (arg %d) returned %q, which wraps none of %s", what, op, arg, err, strings.Join(names, ", "))
	}
}

func (s *accelSuite) checkCapabilities(_ context.Context, st *state) {
	if s.capErr != nil {
		st.failf("Capabilities() panicked: %v", s.capErr)
		return
	}
	c := s.caps
	seen := map[accel.Op]bool{}
	for _, op := range c.Ops {
		if !slices.Contains(allAccelOps, op) {
			st.failf("Capabilities().Ops lists %d, which protocol v1 does not define", int(op))
		}
		if seen[op] {
			st.failf("Capabilities().Ops lists %s twice", op)
		}
		seen[op] = true
	}
	compress := c.Supports(accel.OpCompress) || c.Supports(accel.OpDecompress)
	if compress && c.CompressFormat == "" {
		st.failf("OpCompress/OpDecompress are listed but Capabilities().CompressFormat is empty: name the format so the host can pair it with a codec")
	}
	if !compress && c.CompressFormat != "" {
		st.failf("Capabilities().CompressFormat is %q but neither OpCompress nor OpDecompress is listed", c.CompressFormat)
	}
	if c.Supports(accel.OpCompress) != c.Supports(accel.OpDecompress) {
		st.notef("only one of OpCompress/OpDecompress is listed: the compression checks need both and are skipped")
	}
	again, err := accelCapabilities(s.a)
	if err != nil {
		st.failf("second Capabilities() call panicked: %v", err)
	} else if fmt.Sprint(again) != fmt.Sprint(c) {
		st.failf("Capabilities() is not stable: first %+v, then %+v", c, again)
	}
	if hc, ok := s.a.(sdk.HealthChecker); ok {
		h, err := accelHealth(hc)
		switch {
		case err != nil:
			st.failf("Health() panicked: %v", err)
		case h.Status < sdk.HealthUnknown || h.Status > sdk.Unhealthy:
			st.failf("Health().Status = %d is not a defined sdk.HealthStatus", int(h.Status))
		case h.Status != sdk.Healthy && strings.TrimSpace(h.Detail) == "":
			st.failf("Health() is %s with an empty Detail: say why, so an operator can act", h.Status)
		default:
			st.notef("health: %s: %s", h.Status, h.Detail)
		}
	}
	ops := make([]string, len(c.Ops))
	for i, op := range c.Ops {
		ops[i] = op.String()
	}
	label := ""
	if c.Emulated {
		label = " — EMULATED: stands in for hardware that is not present"
	}
	st.notef("ops [%s], features %v, compress format %q, emulated %v%s", strings.Join(ops, " "), c.Features, c.CompressFormat, c.Emulated, label)
}

func accelHealth(hc sdk.HealthChecker) (h sdk.Health, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = &panicError{p, debug.Stack()}
		}
	}()
	return hc.Health(), nil
}

// checkUnsupported calls every operation the accelerator does not list,
// and operation numbers outside the protocol, with inputs that would be
// valid for them: each must fail with sdk.ErrUnsupported.
func (s *accelSuite) checkUnsupported(_ context.Context, st *state) {
	page := s.pattern[PatternText][:s.ps]
	args := map[accel.Op]int64{accel.OpZeroScan: int64(s.ps), accel.OpHashXXH3: int64(s.ps), accel.OpXOR: 0, accel.OpCompress: s.opts.CompressLevels[0], accel.OpDecompress: 1 << 20}
	n := 0
	for _, op := range append(slices.Clone(allAccelOps), 0, 6, 99, -1, math.MaxInt32) {
		if s.caps.Supports(op) {
			continue
		}
		s.expectErr(st, "unlisted operation", op, args[op], page, sdk.ErrUnsupported)
		n++
	}
	st.notef("%d unlisted or undefined operations refused", n)
}

// refZeroScan is the definition of OpZeroScan.
func refZeroScan(in []byte, ps int) []byte {
	out := make([]byte, 0, len(in)/ps)
	for p := 0; p+ps <= len(in); p += ps {
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

func (s *accelSuite) checkZeroScan(ctx context.Context, st *state) {
	inputs := []struct {
		what string
		in   []byte
	}{{"pages with a single non-zero byte", s.single}}
	for _, p := range Patterns() {
		inputs = append(inputs, struct {
			what string
			in   []byte
		}{p.Name + " pages", s.pattern[p.Name]})
	}
	inputs = append(inputs, struct {
		what string
		in   []byte
	}{"one page", s.single[s.ps : 2*s.ps]}, struct {
		what string
		in   []byte
	}{"all patterns back to back", s.pages})
	zero, total := 0, 0
	for _, c := range inputs {
		if ctx.Err() != nil {
			st.skipf("context ended: %v", ctx.Err())
			return
		}
		want := refZeroScan(c.in, s.ps)
		for _, spare := range []int{0, len(want) + 16} {
			got, ok := s.runFresh(st, c.what, accel.OpZeroScan, int64(s.ps), c.in, spare)
			if !ok {
				return
			}
			if !bytes.Equal(got, want) {
				st.failf("%s: zero scan differs from the reference: %s", c.what, pageDiff(got, want, 1))
			}
		}
		for _, z := range want {
			zero += int(z)
		}
		total += len(want)
	}
	if out, err := s.run(prefixed(0), accel.OpZeroScan, int64(s.ps), nil); err == nil && len(out) != prefixLen {
		st.failf("zero scan of no pages appended %d bytes; it must append none (or fail with sdk.ErrInvalidArgument)", len(out)-prefixLen)
	} else if err != nil && !errors.Is(err, sdk.ErrInvalidArgument) {
		st.failf("zero scan of no pages: %v (want success with nothing appended, or sdk.ErrInvalidArgument)", err)
	}
	st.notef("%d pages of %d bytes scanned (%d zero), all equal to the reference", total, s.ps, zero)
}

// pageDiff names the first differing record of size per.
func pageDiff(got, want []byte, per int) string {
	if len(got) != len(want) {
		return fmt.Sprintf("%d output bytes, want %d (%d per page)", len(got), len(want), per)
	}
	for i := 0; i < len(got); i += per {
		if !bytes.Equal(got[i:i+per], want[i:i+per]) {
			return fmt.Sprintf("page %d: got %x, want %x", i/per, got[i:i+per], want[i:i+per])
		}
	}
	return "equal"
}

// checkPageLengths sends inputs that are not whole pages and page sizes
// that are not sizes.
func (s *accelSuite) checkPageLengths(st *state, op accel.Op) {
	ps := s.ps
	two := s.pattern[PatternText][:2*ps]
	for _, c := range []struct {
		what string
		arg  int64
		in   []byte
	}{
		{"one byte more than a page", int64(ps), two[:ps+1]},
		{"one byte less than a page", int64(ps), two[:ps-1]},
		{"one byte less than two pages", int64(ps), two[:2*ps-1]},
		{"page size 0", 0, two},
		{"page size -1", -1, two},
		{fmt.Sprintf("page size %d", math.MinInt64), math.MinInt64, two},
	} {
		s.expectErr(st, c.what, op, c.arg, c.in, sdk.ErrInvalidArgument)
	}
}

// xxh3Vectors are XXH3-128 digests from the reference implementation
// (xxhsum 0.8.1 -H2), in the canonical form OpHashXXH3 specifies: high 64
// bits then low, big-endian. The pages are generated by rampPage.
var xxh3Vectors = []struct {
	n, mul, add int
	want        string
}{
	{4096, 0, 0, "3ee8dc4f9e7ee49593d76fe148c689ba"},
	{4096, 1, 0, "03916578969f7a66eb4b7c3707879151"},
	{4096, 7, 3, "1546867423105cd5d7428746842be37e"},
	{1024, 1, 0, "83885e853bb6640ca870f92984398d22"},
	{100, 1, 0, "da95ef16fd9566f329b20ba5f03ec01e"},
	{17, 1, 0, "685bc458b37d057fc06e233df7729217"},
	{1, 0, 0, "a6cd5e9392000f6ac44bdff4074eecdb"},
}

// rampPage returns n bytes with byte i = i*mul + add (mod 256).
func rampPage(n, mul, add int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*mul + add)
	}
	return b
}

func (s *accelSuite) checkHashKnown(_ context.Context, st *state) {
	n := 0
	for _, v := range xxh3Vectors {
		page := rampPage(v.n, v.mul, v.add)
		// Three copies in one call: every digest must be the vector.
		in := bytes.Repeat(page, 3)
		what := fmt.Sprintf("%d-byte page (byte i = %d·i+%d)", v.n, v.mul, v.add)
		out, err := s.run(prefixed(0), accel.OpHashXXH3, int64(v.n), in)
		if err != nil {
			if v.n != s.ps && errors.Is(err, sdk.ErrInvalidArgument) {
				st.notef("page size %d refused (%v): an accelerator may support only some page sizes", v.n, err)
				continue
			}
			st.failf("%s: %s: %v", what, accel.OpHashXXH3, err)
			continue
		}
		if !prefixIntact(out) {
			st.failf("%s: %s did not preserve dst's prefix", what, accel.OpHashXXH3)
			continue
		}
		got := hex.EncodeToString(out[prefixLen:])
		if want := strings.Repeat(v.want, 3); got != want {
			st.failf("%s: digests %s, want %s ×3 (XXH3-128 with the default secret and seed 0, high 64 bits then low, both big-endian)", what, got, v.want)
		}
		n++
	}
	if n == 0 {
		st.failf("no known-answer vector could be checked")
	}
	st.notef("%d known-answer vectors match the reference implementation", n)
}

// checkHashProperties checks what the kit can without an XXH3 of its own:
// length, determinism, equal pages → equal digests wherever they sit,
// distinct pages → distinct digests (a collision among a few hundred
// 128-bit digests means the hash is broken, not unlucky).
func (s *accelSuite) checkHashProperties(ctx context.Context, st *state) {
	ps := s.ps
	in := slices.Clone(s.pages)
	// Pages that differ from an earlier page in one bit, and exact copies
	// of earlier pages, so both equality and sensitivity are exercised.
	base := s.pattern[PatternRealMemory]
	for i := range 8 {
		p := slices.Clone(base[i*ps : (i+1)*ps])
		in = append(in, p...)
		p[(i*131)%ps] ^= 1 << (i % 8)
		in = append(in, p...)
	}
	n := len(in) / ps
	a, ok := s.runFresh(st, "all pages", accel.OpHashXXH3, int64(ps), in, 0)
	if !ok {
		return
	}
	if len(a) != 16*n {
		st.failf("%d pages hashed to %d bytes; want 16 per page (%d)", n, len(a), 16*n)
		return
	}
	b, ok := s.runFresh(st, "all pages again, dst with spare capacity", accel.OpHashXXH3, int64(ps), in, len(a)+32)
	if !ok {
		return
	}
	if !bytes.Equal(a, b) {
		st.failf("hashing the same pages twice gave different digests: %s", pageDiff(b, a, 16))
	}
	byDigest := map[string]int{}
	for i := range n {
		if ctx.Err() != nil {
			st.skipf("context ended: %v", ctx.Err())
			return
		}
		d := string(a[16*i : 16*i+16])
		page := in[i*ps : (i+1)*ps]
		if j, seen := byDigest[d]; seen {
			if !bytes.Equal(page, in[j*ps:(j+1)*ps]) {
				st.failf("pages %d and %d differ but have the same digest %x", j, i, d)
			}
		} else {
			for j := range i {
				if bytes.Equal(page, in[j*ps:(j+1)*ps]) {
					st.failf("pages %d and %d are equal but have different digests", j, i)
					break
				}
			}
			byDigest[d] = i
		}
	}
	// A page's digest does not depend on where in the batch it sits.
	for _, i := range []int{0, n / 3, n - 1} {
		one, ok := s.runFresh(st, fmt.Sprintf("page %d alone", i), accel.OpHashXXH3, int64(ps), in[i*ps:(i+1)*ps], 0)
		if !ok {
			return
		}
		if !bytes.Equal(one, a[16*i:16*i+16]) {
			st.failf("page %d hashed alone gives %x, but %x inside the batch", i, one, a[16*i:16*i+16])
		}
	}
	if out, err := s.run(prefixed(0), accel.OpHashXXH3, int64(ps), nil); err == nil && len(out) != prefixLen {
		st.failf("hashing no pages appended %d bytes; it must append none (or fail with sdk.ErrInvalidArgument)", len(out)-prefixLen)
	} else if err != nil && !errors.Is(err, sdk.ErrInvalidArgument) {
		st.failf("hashing no pages: %v (want success with nothing appended, or sdk.ErrInvalidArgument)", err)
	}
	st.notef("%d pages, %d distinct digests; deterministic and position-independent", n, len(byDigest))
}

func (s *accelSuite) checkXOR(ctx context.Context, st *state) {
	r := newRNG(s.opts.Seed, 0x584f52)
	sizes := []int{0, 1, 7, 8, 9, 31, 32, 33, 63, 64, 65, s.ps - 1, s.ps, s.ps + 1, 16 * s.ps, accelPatternPages * s.ps}
	for _, n := range sizes {
		if ctx.Err() != nil {
			st.skipf("context ended: %v", ctx.Err())
			return
		}
		old := s.pattern[PatternRealMemory][:n]
		cur := make([]byte, n)
		r.fill(cur)
		if n > 64 {
			// Mostly unchanged, as a re-sent dirty page is.
			copy(cur[n/8:], old[n/8:])
		}
		in := append(slices.Clone(old), cur...)
		want := make([]byte, n)
		for i := range want {
			want[i] = old[i] ^ cur[i]
		}
		for _, spare := range []int{0, n + 16} {
			got, ok := s.runFresh(st, fmt.Sprintf("halves of %d bytes", n), accel.OpXOR, 0, in, spare)
			if !ok {
				return
			}
			if !bytes.Equal(got, want) {
				st.failf("halves of %d bytes: old XOR new differs from the reference: %s", n, diff(got, want))
				return
			}
		}
	}
	st.notef("%d sizes from 0 to %d bytes per half equal the reference", len(sizes), sizes[len(sizes)-1])
}

func (s *accelSuite) checkXORLengths(_ context.Context, st *state) {
	in := s.pattern[PatternText][:2*s.ps+1]
	for _, n := range []int{1, 3, s.ps + 1, 2*s.ps + 1} {
		s.expectErr(st, fmt.Sprintf("%d input bytes (no equal halves)", n), accel.OpXOR, 0, in[:n], sdk.ErrInvalidArgument)
	}
}

// compressSizes are the block sizes every pattern is compressed at.
var compressSizes = []int{0, 1, 4 << 10, 64 << 10}

func (s *accelSuite) compress(st *state, what string, level int64, src []byte) ([]byte, bool) {
	return s.runFresh(st, fmt.Sprintf("%s at level %d", what, level), accel.OpCompress, level, src, 0)
}

func (s *accelSuite) checkCompressRoundTrip(ctx context.Context, st *state) {
	var in, out int
	for _, level := range s.opts.CompressLevels {
		for _, p := range Patterns() {
			for _, n := range compressSizes {
				if ctx.Err() != nil {
					st.skipf("context ended: %v", ctx.Err())
					return
				}
				src := s.pattern[p.Name][:n]
				what := fmt.Sprintf("%s %d bytes", p.Name, n)
				enc, ok := s.compress(st, what, level, src)
				if !ok {
					return
				}
				for _, spare := range []int{0, n + 64} {
					dec, ok := s.runFresh(st, what+" decompressed", accel.OpDecompress, int64(n), enc, spare)
					if !ok {
						return
					}
					if !bytes.Equal(dec, src) {
						st.failf("%s at level %d: decompress(compress(x)) != x: %s", what, level, diff(dec, src))
						return
					}
				}
				in += n
				out += len(enc)
			}
		}
	}
	st.notef("levels %v, %d patterns × %d sizes: %d → %d bytes in %s", s.opts.CompressLevels, len(Patterns()), len(compressSizes), in, out, s.caps.CompressFormat)
}

func (s *accelSuite) checkDecompressLimits(_ context.Context, st *state) {
	level := s.opts.CompressLevels[0]
	for _, name := range []string{PatternText, PatternRandom, PatternZeros} {
		for _, n := range []int{1, 4 << 10, 64 << 10} {
			src := s.pattern[name][:n]
			what := fmt.Sprintf("%s %d bytes", name, n)
			enc, ok := s.compress(st, what, level, src)
			if !ok {
				return
			}
			for _, limit := range []int64{int64(n) - 1, int64(n) / 2, 0} {
				if limit < int64(n) {
					s.expectErr(st, what+fmt.Sprintf(" with output limit %d", limit), accel.OpDecompress, limit, enc, sdk.ErrTooLarge)
				}
			}
			s.expectErr(st, what+" with output limit -1", accel.OpDecompress, -1, enc, sdk.ErrInvalidArgument, sdk.ErrTooLarge)
		}
	}
}

// accelBombSize and accelBombLimit shape the decompression bomb: 16 MiB of
// zeros decompressed with a 64 KiB limit.
const (
	accelBombSize  = 16 << 20
	accelBombLimit = 64 << 10
)

func (s *accelSuite) checkDecompressBomb(_ context.Context, st *state) {
	// Zeros compress far at any level; the first listed is usually the
	// fastest.
	level := s.opts.CompressLevels[0]
	enc, ok := s.compress(st, fmt.Sprintf("%d zero bytes", accelBombSize), level, make([]byte, accelBombSize))
	if !ok {
		return
	}
	what := fmt.Sprintf("%d zero bytes compressed to %d", accelBombSize, len(enc))
	if s.remote {
		s.expectErr(st, what, accel.OpDecompress, accelBombLimit, enc, sdk.ErrTooLarge)
		st.notef("bomb: %d zero bytes → %d compressed, refused with limit %d (allocation is checked in-process only)", accelBombSize, len(enc), accelBombLimit)
		return
	}
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	s.expectErr(st, what, accel.OpDecompress, accelBombLimit, enc, sdk.ErrTooLarge)
	runtime.ReadMemStats(&after)
	allocated := after.TotalAlloc - before.TotalAlloc
	if lim := uint64(max(accelBombSize/4, 2<<20)); allocated > lim {
		st.failf("decompressing the %d-byte bomb with limit %d allocated %d bytes: check the declared size, or decode with a running limit, before allocating the whole output", accelBombSize, accelBombLimit, allocated)
	}
	st.notef("bomb: %d zero bytes → %d compressed; decompress with limit %d allocated %d bytes", accelBombSize, len(enc), accelBombLimit, allocated)
}

// corruptAccepted checks one decompression of damaged input: no panic, an
// error of the documented kinds, or a success within the limit that kept
// dst's prefix. It reports whether the decompression succeeded.
func (s *accelSuite) corruptAccepted(st *state, what string, in []byte, limit int64) bool {
	out, err := s.run(prefixed(0), accel.OpDecompress, limit, in)
	switch {
	case err == nil:
		if !prefixIntact(out) {
			st.failf("%s: decompression succeeded but did not preserve dst's prefix", what)
		} else if int64(len(out)-prefixLen) > limit {
			st.failf("%s: decompression returned %d bytes, over the limit %d", what, len(out)-prefixLen, limit)
		}
		return true
	case isPanic(err):
		st.failf("%s: %v", what, err)
	case !errIsAny(err, sdk.ErrCorruptInput, sdk.ErrTooLarge):
		st.failf("%s: decompression returned %q, which wraps neither sdk.ErrCorruptInput nor sdk.ErrTooLarge", what, err)
	}
	return false
}

func (s *accelSuite) checkDecompressTruncated(ctx context.Context, st *state) {
	level := s.opts.CompressLevels[0]
	cases := 0
	for _, name := range []string{PatternText, PatternRealMemory, PatternRandom} {
		src := s.pattern[name][:16<<10]
		enc, ok := s.compress(st, name, level, src)
		if !ok {
			return
		}
		for _, cut := range cutPoints(len(enc), 32, 16, 32) {
			if ctx.Err() != nil {
				st.skipf("context ended: %v", ctx.Err())
				return
			}
			what := fmt.Sprintf("compressed %s (%d bytes) cut to %d of %d bytes", name, len(src), cut, len(enc))
			if s.corruptAccepted(st, what, enc[:cut], int64(len(src))) {
				st.failf("%s: decompression succeeded; a truncated block must fail with sdk.ErrCorruptInput", what)
			}
			cases++
		}
	}
	st.notef("%d truncated blocks rejected", cases)
}

func (s *accelSuite) checkDecompressGarbage(ctx context.Context, st *state) {
	level := s.opts.CompressLevels[0]
	src := s.pattern[PatternRealMemory][:16<<10]
	enc, ok := s.compress(st, PatternRealMemory, level, src)
	if !ok {
		return
	}
	const limit = 1 << 20
	cases, silent := 0, 0
	bad := slices.Clone(enc)
	for _, pos := range cutPoints(len(enc), 64, 32, 64) {
		if ctx.Err() != nil {
			st.skipf("context ended: %v", ctx.Err())
			return
		}
		bit := byte(1) << (pos % 8)
		bad[pos] ^= bit
		if s.corruptAccepted(st, fmt.Sprintf("bit %d of byte %d flipped", pos%8, pos), bad, limit) {
			silent++
		}
		bad[pos] ^= bit
		cases++
	}
	r := newRNG(s.opts.Seed, 0x47415242)
	buf := make([]byte, 8<<10)
	for i := range 200 {
		in := buf[:1+r.intn(len(buf))]
		r.fill(in)
		if i%2 == 1 {
			copy(in, enc[:min(len(enc), len(in), 1+r.intn(16))])
		}
		s.corruptAccepted(st, fmt.Sprintf("%d random bytes (case %d)", len(in), i), in, limit)
		cases++
	}
	for _, in := range [][]byte{{}, bytes.Repeat([]byte{0xff}, 4096)} {
		if s.corruptAccepted(st, fmt.Sprintf("%d bytes of 0xff", len(in)), in, limit) && len(in) > 0 {
			st.failf("%d bytes of 0xff decompressed without error: no compressed format should accept that", len(in))
		}
		cases++
	}
	st.notef("%d damaged or random blocks handled without panic (%d bit flips decoded without error: the format has no checksum)", cases, silent)
}

func (s *accelSuite) checkCompressInvalidLevel(_ context.Context, st *state) {
	src := s.pattern[PatternText][:4<<10]
	for _, level := range []int64{math.MinInt64, math.MaxInt64} {
		s.expectErr(st, fmt.Sprintf("level %d", level), accel.OpCompress, level, src, sdk.ErrInvalidArgument)
	}
}

// checkRobustness throws seeded random operations, arguments and inputs
// at the accelerator: no panic, and every error wraps a sentinel.
func (s *accelSuite) checkRobustness(ctx context.Context, st *state) {
	r := newRNG(s.opts.Seed, 0x524f42)
	ops := append(slices.Clone(allAccelOps), 0, 9)
	args := []int64{-1, 0, 1, 2, 3, 4096, 1 << 20, int64(s.ps)}
	buf := make([]byte, 3*s.ps)
	for i := range 400 {
		if ctx.Err() != nil {
			st.skipf("context ended: %v", ctx.Err())
			return
		}
		op := ops[r.intn(len(ops))]
		arg := args[r.intn(len(args))]
		in := buf[:r.intn(len(buf)+1)]
		r.fill(in)
		if i%3 == 0 {
			clear(in[:len(in)/2])
		}
		out, err := s.run(prefixed(0), op, arg, in)
		switch {
		case isPanic(err):
			st.failf("%s (arg %d, %d input bytes): %v", op, arg, len(in), err)
		case err != nil && !errIsAny(err, sdk.ErrInvalidArgument, sdk.ErrUnsupported, sdk.ErrCorruptInput, sdk.ErrTooLarge, sdk.ErrUnavailable):
			st.failf("%s (arg %d, %d input bytes) returned %q, which wraps no sdk sentinel the host can act on", op, arg, len(in), err)
		case err == nil && !prefixIntact(out):
			st.failf("%s (arg %d, %d input bytes) did not preserve dst's prefix", op, arg, len(in))
		}
	}
	st.notef("400 random calls handled")
}

// accelJob is one call of the concurrency mix with its expected output.
type accelJob struct {
	op   accel.Op
	arg  int64
	in   []byte
	want []byte // nil for OpCompress, whose output is checked by round trip
	n    int    // OpCompress: the input size
}

func (s *accelSuite) checkAccelConcurrency(ctx context.Context, st *state) {
	var jobs []accelJob
	for _, p := range Patterns() {
		in := s.pattern[p.Name][:16*s.ps]
		if s.caps.Supports(accel.OpZeroScan) {
			jobs = append(jobs, accelJob{op: accel.OpZeroScan, arg: int64(s.ps), in: in})
		}
		if s.caps.Supports(accel.OpHashXXH3) {
			jobs = append(jobs, accelJob{op: accel.OpHashXXH3, arg: int64(s.ps), in: in})
		}
		if s.caps.Supports(accel.OpXOR) {
			jobs = append(jobs, accelJob{op: accel.OpXOR, in: in})
		}
		if s.caps.Supports(accel.OpCompress) && s.caps.Supports(accel.OpDecompress) {
			jobs = append(jobs, accelJob{op: accel.OpCompress, arg: s.opts.CompressLevels[0], in: in, n: len(in)})
		}
	}
	if len(jobs) == 0 {
		st.skipf("no operation listed")
		return
	}
	for i := range jobs {
		j := &jobs[i]
		if j.op == accel.OpCompress {
			continue
		}
		out, err := s.run(nil, j.op, j.arg, j.in)
		if err != nil {
			st.failf("sequential %s: %v", j.op, err)
			return
		}
		j.want = out
	}
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
			var dst, dec []byte
			for k := range 2 * len(jobs) {
				if ctx.Err() != nil {
					return
				}
				j := jobs[(g*5+k)%len(jobs)]
				var err error
				dst, err = s.run(dst[:0], j.op, j.arg, j.in)
				if err != nil {
					report("goroutine %d: %s: %v", g, j.op, err)
					return
				}
				if j.op != accel.OpCompress {
					if !bytes.Equal(dst, j.want) {
						report("goroutine %d: concurrent %s differs from the sequential result", g, j.op)
					}
					continue
				}
				dec, err = s.run(dec[:0], accel.OpDecompress, int64(j.n), dst)
				if err != nil {
					report("goroutine %d: decompress: %v", g, err)
					return
				}
				if !bytes.Equal(dec, j.in) {
					report("goroutine %d: concurrent compress round trip: %s", g, diff(dec, j.in))
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
	st.notef("%d goroutines × %d calls each, reusing their buffers", s.opts.Goroutines, 2*len(jobs))
}
