// Package accel defines the interface of a DWCP accelerator plugin: page
// stage primitives (zero scan, content hash, XOR delta) and optional
// compression offload, implemented with CPU fast paths or a device.
//
// It owns the contract only; implementations live in the host repository's
// accel/ folder or in third-party modules.
package accel

// Op names one accelerator operation.
type Op int

const (
	// OpZeroScan: input n pages of pageSize bytes; output one byte per page,
	// 1 where the page is all zeros, else 0.
	OpZeroScan Op = 1
	// OpHashXXH3: input n pages; output 16 bytes per page, the XXH3-128 of
	// the page, high 64 bits then low, big-endian.
	OpHashXXH3 Op = 2
	// OpXOR: input old||new (equal halves); output old XOR new.
	OpXOR Op = 3
	// OpCompress: input a block; output it compressed at level arg in
	// Capabilities.CompressFormat.
	OpCompress Op = 4
	// OpDecompress: the inverse of OpCompress; arg is the maximum output.
	OpDecompress Op = 5
)

func (o Op) String() string {
	switch o {
	case OpZeroScan:
		return "zero-scan"
	case OpHashXXH3:
		return "hash-xxh3-128"
	case OpXOR:
		return "xor"
	case OpCompress:
		return "compress"
	case OpDecompress:
		return "decompress"
	}
	return "op(?)"
}

// Accelerator runs operations on byte blocks. Run appends the result of op
// on in to dst. An op the plugin does not list in Capabilities yields
// sdk.ErrUnsupported; malformed input (length not a multiple of the page
// size, unequal XOR halves, a damaged compressed block) an error wrapping
// sdk.ErrInvalidArgument or sdk.ErrCorruptInput. Implementations are safe
// for concurrent use and never panic on any input.
type Accelerator interface {
	Capabilities() Capabilities
	Run(dst []byte, op Op, arg int64, in []byte) ([]byte, error)
}

// Capabilities describes an accelerator.
type Capabilities struct {
	Ops []Op
	// Features names the CPU features or device used, e.g. "avx2".
	Features []string
	// Emulated is true when the plugin stands in for hardware that is not
	// present (a fake): the host labels it so everywhere.
	Emulated bool
	// CompressFormat names the format of OpCompress output, e.g. "deflate".
	CompressFormat string
}

// Supports reports whether op is listed.
func (c Capabilities) Supports(op Op) bool {
	for _, o := range c.Ops {
		if o == op {
			return true
		}
	}
	return false
}
