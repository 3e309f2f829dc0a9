// Package refaccel is a small, complete accelerator used to test the
// conformance kit itself: zero scan, XOR and a "store" compression format
// (uvarint length | CRC-32 | bytes). With FaultNone it honours the whole
// contract; each other Fault breaks exactly one rule, so the kit's tests
// can show that every check catches what it claims to.
//
// It must not be used outside the kit's tests: it offers no speed and its
// hash stand-in (FaultFNVHash) is deliberately not XXH3.
package refaccel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"hash/fnv"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/accel"
)

// Fault selects one way Accel breaks the contract.
type Fault int

const (
	FaultNone Fault = iota
	// FaultZeroFirstLine: zero scan looks at the first 64 bytes only.
	FaultZeroFirstLine
	// FaultDropsPrefix: zero scan overwrites dst instead of appending.
	FaultDropsPrefix
	// FaultPanicXOR: XOR panics on halves over one page.
	FaultPanicXOR
	// FaultAcceptsUnlisted: an unlisted op (hash) answers instead of
	// refusing.
	FaultAcceptsUnlisted
	// FaultPlainErrors: bad lengths give errors that wrap no sentinel.
	FaultPlainErrors
	// FaultNoLimit: decompression ignores its output limit.
	FaultNoLimit
	// FaultSilentTruncation: a truncated block decompresses to a prefix.
	FaultSilentTruncation
	// FaultFNVHash lists OpHashXXH3 but computes FNV-128a: deterministic
	// and collision-free, yet not the specified function.
	FaultFNVHash
	// FaultEmulated sets Capabilities.Emulated (labelling is up to the
	// plugin binary's name and summary).
	FaultEmulated
)

// Accel implements accel.Accelerator.
type Accel struct{ Fault Fault }

// Capabilities lists zero scan, XOR and store compression.
func (a *Accel) Capabilities() accel.Capabilities {
	c := accel.Capabilities{
		Ops:            []accel.Op{accel.OpZeroScan, accel.OpXOR, accel.OpCompress, accel.OpDecompress},
		Features:       []string{"go"},
		CompressFormat: "store-crc32",
	}
	if a.Fault == FaultFNVHash {
		c.Ops = append(c.Ops, accel.OpHashXXH3)
	}
	c.Emulated = a.Fault == FaultEmulated
	return c
}

func (a *Accel) invalid(format string, args ...any) error {
	if a.Fault == FaultPlainErrors {
		return fmt.Errorf(format, args...)
	}
	return fmt.Errorf(format+": %w", append(args, sdk.ErrInvalidArgument)...)
}

// Run performs op.
func (a *Accel) Run(dst []byte, op accel.Op, arg int64, in []byte) ([]byte, error) {
	switch op {
	case accel.OpZeroScan:
		if arg <= 0 || int64(len(in))%arg != 0 {
			return dst, a.invalid("refaccel zero scan: %d bytes in pages of %d", len(in), arg)
		}
		if a.Fault == FaultDropsPrefix {
			dst = dst[:0]
		}
		for p := 0; p < len(in); p += int(arg) {
			page := in[p : p+int(arg)]
			if a.Fault == FaultZeroFirstLine {
				page = page[:min(64, len(page))]
			}
			z := byte(1)
			for _, c := range page {
				if c != 0 {
					z = 0
					break
				}
			}
			dst = append(dst, z)
		}
		return dst, nil
	case accel.OpXOR:
		if len(in)%2 != 0 {
			return dst, a.invalid("refaccel xor: %d bytes", len(in))
		}
		h := len(in) / 2
		if a.Fault == FaultPanicXOR && h > 4096 {
			panic("refaccel: xor of a large block")
		}
		for i := range h {
			dst = append(dst, in[i]^in[h+i])
		}
		return dst, nil
	case accel.OpCompress:
		if arg < 1 || arg > 3 {
			return dst, a.invalid("refaccel compress: level %d", arg)
		}
		dst = binary.AppendUvarint(dst, uint64(len(in)))
		dst = binary.LittleEndian.AppendUint32(dst, crc32.ChecksumIEEE(in))
		return append(dst, in...), nil
	case accel.OpDecompress:
		return a.decompress(dst, arg, in)
	case accel.OpHashXXH3:
		if a.Fault != FaultFNVHash && a.Fault != FaultAcceptsUnlisted {
			break
		}
		if arg <= 0 || int64(len(in))%arg != 0 {
			return dst, a.invalid("refaccel hash: %d bytes in pages of %d", len(in), arg)
		}
		for p := 0; p < len(in); p += int(arg) {
			h := fnv.New128a()
			h.Write(in[p : p+int(arg)])
			dst = h.Sum(dst)
		}
		return dst, nil
	}
	return dst, fmt.Errorf("refaccel %s: %w", op, sdk.ErrUnsupported)
}

var errCorrupt = errors.New("refaccel: damaged block")

func (a *Accel) decompress(dst []byte, limit int64, in []byte) ([]byte, error) {
	if limit < 0 {
		return dst, a.invalid("refaccel decompress: limit %d", limit)
	}
	n, k := binary.Uvarint(in)
	if k <= 0 || len(in) < k+4 {
		return dst, fmt.Errorf("%w: header: %w", errCorrupt, sdk.ErrCorruptInput)
	}
	if n > uint64(limit) && a.Fault != FaultNoLimit {
		return dst, fmt.Errorf("refaccel decompress: %d bytes, limit %d: %w", n, limit, sdk.ErrTooLarge)
	}
	body := in[k+4:]
	if uint64(len(body)) != n {
		if a.Fault == FaultSilentTruncation && uint64(len(body)) < n {
			return append(dst, body...), nil
		}
		return dst, fmt.Errorf("%w: %d body bytes, header says %d: %w", errCorrupt, len(body), n, sdk.ErrCorruptInput)
	}
	if crc32.ChecksumIEEE(body) != binary.LittleEndian.Uint32(in[k:]) {
		return dst, fmt.Errorf("%w: checksum: %w", errCorrupt, sdk.ErrCorruptInput)
	}
	return append(dst, body...), nil
}
