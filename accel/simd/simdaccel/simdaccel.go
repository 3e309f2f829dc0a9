// Package simdaccel is the CPU accelerator: zero-page scan, XXH3-128 page
// hashing, XOR delta and s2 block compression, each on the fastest path this
// CPU offers, chosen once when the accelerator is built.
//
// It owns the choice of implementation per operation and the validation of
// every request. It must not keep state between calls (the host may call it
// from many goroutines at once) and must not allocate per page: every
// operation appends to the caller's dst, which the caller reuses.
package simdaccel

import (
	"fmt"
	"slices"
	"strings"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/accel"
)

// CompressFormat names the output of OpCompress: the s2 block format
// (klauspost/compress/s2 Encode), which s2.Decode reads.
const CompressFormat = "s2"

// Compression levels accepted by OpCompress.
const (
	LevelFast   = 1 // s2.Encode
	LevelBetter = 2 // s2.EncodeBetter
	LevelBest   = 3 // s2.EncodeBest
)

// Accel implements accel.Accelerator. It is immutable once built and safe
// for concurrent use.
type Accel struct {
	caps   accel.Capabilities
	paths  Paths
	isZero func(page []byte) bool
	xor    func(dst, a, b []byte)
}

// Paths names the implementation chosen for each operation, for logs and
// the plugin summary.
type Paths struct {
	ZeroScan string
	Hash     string
	XOR      string
	Compress string // empty when compression is off
}

func (p Paths) String() string {
	s := fmt.Sprintf("zero-scan=%s hash=%s xor=%s", p.ZeroScan, p.Hash, p.XOR)
	if p.Compress != "" {
		s += " compress=" + p.Compress
	}
	return s
}

type options struct {
	generic     bool
	compression bool
}

// Option configures New.
type Option func(*options) error

// WithGeneric forces the pure-Go loops for zero scan and XOR, as on a CPU
// without vector units. XXH3 keeps its own dispatch (zeebo/xxh3 decides
// from CPUID at init and offers no switch), which Paths reports.
func WithGeneric(generic bool) Option {
	return func(o *options) error { o.generic = generic; return nil }
}

// WithCompression lists OpCompress and OpDecompress (s2) or leaves them out.
// They are on by default.
func WithCompression(on bool) Option {
	return func(o *options) error { o.compression = on; return nil }
}

// New detects the CPU's features and picks an implementation per operation.
func New(opts ...Option) (*Accel, error) {
	o := options{compression: true}
	for _, opt := range opts {
		if opt == nil {
			return nil, fmt.Errorf("simdaccel: nil option: %w", sdk.ErrInvalidArgument)
		}
		if err := opt(&o); err != nil {
			return nil, fmt.Errorf("simdaccel option: %w", err)
		}
	}
	return build(detect(), o), nil
}

// build is New with the CPU features given, so that tests can select every
// path the CPU under test can run.
func build(f cpuFeatures, o options) *Accel {
	a := &Accel{}
	var used []string

	z := selectZeroScan(f, o.generic)
	a.isZero, a.paths.ZeroScan = z.fn, z.name
	used = append(used, z.features...)

	x := selectXOR(f, o.generic)
	a.xor, a.paths.XOR = x.fn, x.name
	used = append(used, x.features...)

	h := hashPath(f)
	a.paths.Hash = h.name
	used = append(used, h.features...)

	ops := []accel.Op{accel.OpZeroScan, accel.OpHashXXH3, accel.OpXOR}
	if o.compression {
		ops = append(ops, accel.OpCompress, accel.OpDecompress)
		a.paths.Compress = "s2-block"
		a.caps.CompressFormat = CompressFormat
	}
	slices.Sort(used)
	a.caps.Ops = ops
	a.caps.Features = slices.Compact(used)
	return a
}

// Capabilities lists the operations and the CPU features the chosen paths
// use. The returned value is a copy the caller may modify.
func (a *Accel) Capabilities() accel.Capabilities {
	c := a.caps
	c.Ops = slices.Clone(c.Ops)
	c.Features = slices.Clone(c.Features)
	return c
}

// Paths reports the implementation chosen for each operation.
func (a *Accel) Paths() Paths { return a.paths }

// Health reports healthy with the chosen paths: the accelerator needs
// nothing but the CPU it runs on.
func (a *Accel) Health() sdk.Health {
	return sdk.Health{Status: sdk.Healthy, Detail: a.paths.String() + "; cpu features " + strings.Join(a.caps.Features, ",")}
}

// Run appends the result of op on in to dst. For the page operations arg is
// the page size; for OpCompress the level (1-3); for OpDecompress the
// largest output accepted.
func (a *Accel) Run(dst []byte, op accel.Op, arg int64, in []byte) (out []byte, err error) {
	// The operations below are written not to panic; this guard turns a bug
	// in them or in a library into an error instead of a dead plugin.
	defer func() {
		if r := recover(); r != nil {
			out, err = dst, fmt.Errorf("simdaccel %s: internal error: %v", op, r)
		}
	}()
	switch op {
	case accel.OpZeroScan:
		return a.zeroScan(dst, arg, in)
	case accel.OpHashXXH3:
		return hashPages(dst, arg, in)
	case accel.OpXOR:
		return a.xorHalves(dst, in)
	case accel.OpCompress, accel.OpDecompress:
		if a.caps.CompressFormat == "" {
			break
		}
		if op == accel.OpCompress {
			return compress(dst, arg, in)
		}
		return decompress(dst, arg, in)
	}
	return dst, fmt.Errorf("simdaccel %s: %w", op, sdk.ErrUnsupported)
}

// pageCount validates a page-operation request and returns the number of
// pages in in.
func pageCount(op accel.Op, pageSize int64, in []byte) (int, error) {
	if pageSize <= 0 {
		return 0, fmt.Errorf("simdaccel %s: page size %d: %w", op, pageSize, sdk.ErrInvalidArgument)
	}
	if int64(len(in))%pageSize != 0 {
		return 0, fmt.Errorf("simdaccel %s: input of %d bytes is not a whole number of %d-byte pages: %w",
			op, len(in), pageSize, sdk.ErrInvalidArgument)
	}
	return int(int64(len(in)) / pageSize), nil
}

func (a *Accel) zeroScan(dst []byte, pageSize int64, in []byte) ([]byte, error) {
	n, err := pageCount(accel.OpZeroScan, pageSize, in)
	if err != nil {
		return dst, err
	}
	ps := int(pageSize)
	start := len(dst)
	dst = slices.Grow(dst, n)[:start+n]
	out := dst[start:]
	for i := range out {
		if a.isZero(in[i*ps : (i+1)*ps]) {
			out[i] = 1
		} else {
			out[i] = 0
		}
	}
	return dst, nil
}

func (a *Accel) xorHalves(dst, in []byte) ([]byte, error) {
	if len(in)%2 != 0 {
		return dst, fmt.Errorf("simdaccel %s: input of %d bytes does not split into equal old and new halves: %w",
			accel.OpXOR, len(in), sdk.ErrInvalidArgument)
	}
	half := len(in) / 2
	start := len(dst)
	dst = slices.Grow(dst, half)[:start+half]
	a.xor(dst[start:], in[:half], in[half:])
	return dst, nil
}
