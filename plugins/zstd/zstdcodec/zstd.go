// Package zstdcodec is DWCP's zstd codec (klauspost/compress/zstd): single
// zstd frames with a content size and a checksum, at four levels that are
// klauspost's four encoder speeds.
//
// It owns the level and tier mapping, the encoder and decoder pools and the
// bounded decode. It must not know about plugins or transports: the plugin
// binary in the parent folder serves it, and the host may link it directly.
package zstdcodec

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/codec"
	"github.com/klauspost/compress/zstd"
)

// Levels. They are klauspost's four encoder speeds rather than zstd's
// 1..22: the library maps 22 reference levels onto these four, so exposing
// 22 would offer a mode controller steps that change nothing.
const (
	LevelFastest = 1 // zstd.SpeedFastest, ~ zstd -1
	LevelDefault = 2 // zstd.SpeedDefault, ~ zstd -3
	LevelBetter  = 3 // zstd.SpeedBetterCompression, ~ zstd -7
	LevelBest    = 4 // zstd.SpeedBestCompression, ~ zstd -11
)

// Algorithm is the format name in Capabilities.
const Algorithm = "zstd"

var speeds = [...]zstd.EncoderLevel{
	LevelFastest: zstd.SpeedFastest,
	LevelDefault: zstd.SpeedDefault,
	LevelBetter:  zstd.SpeedBetterCompression,
	LevelBest:    zstd.SpeedBestCompression,
}

// Codec implements codec.Codec. The zero value is not usable; use New.
type Codec struct {
	concurrency int
	levels      [LevelBest + 1]encoderSlot
	decOnce     sync.Once
	dec         *zstd.Decoder
	decErr      error
}

// encoderSlot lazily builds one zstd.Encoder per level. A zstd.Encoder is
// itself a fixed pool of `concurrency` block encoders handed out through a
// channel, which (unlike sync.Pool) is not emptied by the GC, so the large
// per-level state is built once.
type encoderSlot struct {
	once sync.Once
	enc  *zstd.Encoder
	err  error
}

// New returns a codec whose encoder and decoder pools hold GOMAXPROCS
// entries: more concurrent calls than that wait for a free one.
func New() *Codec {
	return &Codec{concurrency: max(runtime.GOMAXPROCS(0), 1)}
}

// Capabilities implements codec.Codec.
func (c *Codec) Capabilities() codec.Capabilities {
	return codec.Capabilities{
		Algorithm: Algorithm,
		Levels:    codec.LevelRange{Min: LevelFastest, Max: LevelBest, Default: LevelDefault},
		// By encode speed on memory-like data (docs/codecs.md): fastest
		// (up to ~285 MB/s a core) for local links, default (~170-190) for
		// regional ones, better (~100, +1 % ratio) still outruns a thin
		// global link; best (12-17 MB/s a core, +4 %) is slower than even a
		// 160 Mbit/s link needs on two cores, so it is left to manual mode.
		Tiers:         [3]int{codec.TierLocal: LevelFastest, codec.TierRegional: LevelDefault, codec.TierGlobal: LevelBetter},
		Deterministic: true,
		// Incompressible input is stored in raw blocks: n plus a 3-byte
		// header per 128 KiB block, an 18-byte frame header and a 4-byte
		// checksum, well inside n/256 + 64.
		Bound:    codec.Bound{Num: 257, Den: 256, Add: 64},
		Features: []string{"checksum", "content-size"},
	}
}

func (c *Codec) encoder(level int) (*zstd.Encoder, error) {
	s := &c.levels[level]
	s.once.Do(func() {
		s.enc, s.err = zstd.NewWriter(nil,
			zstd.WithEncoderLevel(speeds[level]),
			zstd.WithEncoderConcurrency(c.concurrency),
			zstd.WithEncoderCRC(true),
			// An empty block still gets a frame, so empty input to
			// Decode is always damage.
			zstd.WithZeroFrames(true),
		)
	})
	return s.enc, s.err
}

func (c *Codec) decoder() (*zstd.Decoder, error) {
	c.decOnce.Do(func() {
		c.dec, c.decErr = zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(c.concurrency),
			// DecodeAll then never writes past cap(dst): the limit that
			// Decode sets by slicing dst's capacity.
			zstd.WithDecodeAllCapLimit(true),
		)
	})
	return c.dec, c.decErr
}

// Encode implements codec.Codec: it appends one zstd frame to dst.
func (c *Codec) Encode(dst, src []byte, level int) ([]byte, error) {
	if level < LevelFastest || level > LevelBest {
		return dst, fmt.Errorf("zstd encode: level %d outside %d..%d: %w", level, LevelFastest, LevelBest, sdk.ErrInvalidArgument)
	}
	enc, err := c.encoder(level)
	if err != nil {
		return dst, fmt.Errorf("zstd encode: create level-%d encoder: %w", level, err)
	}
	return enc.EncodeAll(src, dst), nil
}

// Decode implements codec.Codec. It decodes every frame in src (as zstd
// does) and never lets the output exceed maxSize, and it sizes its buffer
// from the input's structure rather than from maxSize: see span.
func (c *Codec) Decode(dst, src []byte, maxSize int) ([]byte, error) {
	if maxSize < 0 {
		return dst, fmt.Errorf("zstd decode: maxSize %d: %w", maxSize, sdk.ErrInvalidArgument)
	}
	if len(src) == 0 {
		return dst, fmt.Errorf("zstd decode: empty input: %w", sdk.ErrCorruptInput)
	}
	least, most, err := span(src)
	if err != nil {
		return dst, fmt.Errorf("zstd decode: %w", err)
	}
	if least > uint64(maxSize) {
		return dst, fmt.Errorf("zstd decode: input declares at least %d bytes, limit %d: %w", least, maxSize, sdk.ErrTooLarge)
	}
	limit := int(min(most, uint64(maxSize)))
	dec, err := c.decoder()
	if err != nil {
		return dst, fmt.Errorf("zstd decode: create decoder: %w", err)
	}
	base := len(dst)
	buf := slices.Grow(dst, limit)
	out, err := dec.DecodeAll(src, buf[:base:base+limit])
	if err != nil {
		if limit < int(min(most, math.MaxInt)) && outOfRoom(err, len(out)-base, limit) {
			return dst, fmt.Errorf("zstd decode: output exceeds limit %d: %w", maxSize, sdk.ErrTooLarge)
		}
		return dst, fmt.Errorf("zstd decode: %v: %w", err, sdk.ErrCorruptInput)
	}
	// The cap limit keeps out in buf's array; hand back buf's full capacity
	// so the caller can reuse it. The check is cheap insurance against a
	// library change.
	if len(out) == base || (len(out) <= cap(buf) && &out[base] == &buf[:len(out)][base]) {
		return buf[:len(out)], nil
	}
	return out, nil
}

// maxBlockSize is the most one zstd block can decode to (the format's
// Block_Maximum_Size).
const maxBlockSize = 128 << 10

// span walks the frames and block headers of src without decoding and
// returns bounds on what it decodes to: least counts declared content sizes
// and raw and RLE blocks; most adds maxBlockSize for every compressed block
// of a frame without a content size. A content size larger than its blocks
// can produce, a truncated block or a reserved block type is damage. For
// real data most is within one block per frame of the true size, so Decode
// never allocates much beyond its output, whatever maxSize is.
func span(src []byte) (least, most uint64, err error) {
	for len(src) > 0 {
		var h zstd.Header
		rest, err := h.DecodeAndStrip(src)
		if err != nil {
			return 0, 0, fmt.Errorf("frame header: %v: %w", err, sdk.ErrCorruptInput)
		}
		if h.Skippable {
			if uint64(len(rest)) < uint64(h.SkippableSize) {
				return 0, 0, fmt.Errorf("skippable frame of %d bytes truncated: %w", h.SkippableSize, sdk.ErrCorruptInput)
			}
			src = rest[h.SkippableSize:]
			continue
		}
		var known, compressed uint64
		for last := false; !last; {
			if len(rest) < 3 {
				return 0, 0, fmt.Errorf("block header truncated: %w", sdk.ErrCorruptInput)
			}
			bh := uint32(rest[0]) | uint32(rest[1])<<8 | uint32(rest[2])<<16
			rest = rest[3:]
			last = bh&1 != 0
			size := uint64(bh >> 3)
			if size > maxBlockSize {
				return 0, 0, fmt.Errorf("block of %d bytes over the format's maximum: %w", size, sdk.ErrCorruptInput)
			}
			var payload uint64
			switch (bh >> 1) & 3 {
			case 0: // raw
				known, payload = known+size, size
			case 1: // RLE: one byte repeated size times
				known, payload = known+size, 1
			case 2: // compressed: size is its input length
				compressed, payload = compressed+1, size
			default:
				return 0, 0, fmt.Errorf("reserved block type: %w", sdk.ErrCorruptInput)
			}
			if uint64(len(rest)) < payload {
				return 0, 0, fmt.Errorf("block truncated: %w", sdk.ErrCorruptInput)
			}
			rest = rest[payload:]
		}
		if h.HasCheckSum {
			if len(rest) < 4 {
				return 0, 0, fmt.Errorf("frame checksum truncated: %w", sdk.ErrCorruptInput)
			}
			rest = rest[4:]
		}
		upper := known + compressed*maxBlockSize
		if h.HasFCS {
			if h.FrameContentSize > upper || h.FrameContentSize < known {
				return 0, 0, fmt.Errorf("frame declares %d bytes, its blocks hold %d..%d: %w", h.FrameContentSize, known, upper, sdk.ErrCorruptInput)
			}
			known, upper = h.FrameContentSize, h.FrameContentSize
		}
		least += known
		most += upper
		src = rest
	}
	return least, most, nil
}

// outOfRoom reports whether a DecodeAll error means the output hit the
// capacity limit rather than damage. klauspost reports the limit as
// ErrDecoderSizeExceeded, except in its assembly sequence decoder, which
// reports a block that does not fit the remaining capacity with the same
// text as a block over the format's maximum. That text counts as out of
// room only when less than one block (plus the decoder's 64-byte margin)
// of room was left (produced is what the failed call had decoded); a
// damaged block elsewhere stays damage.
// TestBombWithoutContentSize pins this against library upgrades.
func outOfRoom(err error, produced, limit int) bool {
	if errors.Is(err, zstd.ErrDecoderSizeExceeded) {
		return true
	}
	return strings.Contains(err.Error(), "output bigger than max block size") && limit-produced < maxBlockSize+64
}
