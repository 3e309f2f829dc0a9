package plugin

import (
	"errors"
	"fmt"
	"io"

	"github.com/dwcp/dwcp/sdk"
	pb "github.com/dwcp/dwcp/sdk/internal/pb/pluginv1"
)

// chunkSize keeps every fallback message far below gRPC's 4 MiB default
// limit, whatever the block size.
const chunkSize = 1 << 20

// maxFallbackBlock bounds what either side accepts on the fallback path, so
// a hostile peer cannot make it allocate without limit.
const maxFallbackBlock = 1 << 30

type chunkSender interface{ Send(*pb.Chunk) error }
type chunkReceiver interface{ Recv() (*pb.Chunk, error) }

// sendChunks sends header (may be nil) and data as a sequence of chunks. An
// empty block still sends one message so the header arrives.
func sendChunks(s chunkSender, h *pb.ChunkHeader, data []byte) error {
	first := true
	for first || len(data) > 0 {
		n := min(len(data), chunkSize)
		c := &pb.Chunk{Data: data[:n]}
		if first {
			c.Header = h
			first = false
		}
		if err := s.Send(c); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

// recvHeader reads the first chunk of a request, which must carry a header.
func recvHeader(r chunkReceiver) (*pb.ChunkHeader, []byte, error) {
	c, err := r.Recv()
	if err != nil {
		return nil, nil, err
	}
	if c.Header == nil {
		return nil, nil, fmt.Errorf("fallback stream: first chunk has no header: %w", sdk.ErrInvalidArgument)
	}
	if c.Header.TotalLen > maxFallbackBlock {
		return nil, nil, fmt.Errorf("fallback stream: block of %d bytes over the %d limit: %w", c.Header.TotalLen, maxFallbackBlock, sdk.ErrTooLarge)
	}
	return c.Header, c.Data, nil
}

// recvBody appends chunks to dst until want bytes arrived (want < 0: until
// the sender closes), refusing more than limit bytes in total.
func recvBody(r chunkReceiver, dst, first []byte, want int64, limit int) ([]byte, error) {
	start := len(dst)
	dst = append(dst, first...)
	for {
		got := int64(len(dst) - start)
		if want >= 0 && got == want {
			return dst, nil
		}
		if got > int64(limit) || (want >= 0 && got > want) {
			return dst, fmt.Errorf("fallback stream: %d bytes received, limit %d: %w", got, limit, sdk.ErrTooLarge)
		}
		c, err := r.Recv()
		if errors.Is(err, io.EOF) {
			if want < 0 {
				return dst, nil
			}
			return dst, fmt.Errorf("fallback stream: ended after %d of %d bytes: %w", got, want, sdk.ErrCorruptInput)
		}
		if err != nil {
			return dst, err
		}
		dst = append(dst, c.Data...)
	}
}
