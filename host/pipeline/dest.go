package pipeline

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dwcp/dwcp/host/internal/pb/streamv1"
	"github.com/dwcp/dwcp/host/wire"
	"github.com/dwcp/dwcp/sdk/codec"
	"github.com/zeebo/blake3"
	"golang.org/x/sync/errgroup"
)

// DestConfig configures Receive.
type DestConfig struct {
	// Codecs by algorithm name.
	Codecs map[string]codec.Codec
	// PageStage builds the page-stage decoder a source asks for; nil
	// refuses page-stage streams.
	PageStage DecoderFactory
	// Workers decompress in parallel (default GOMAXPROCS).
	Workers int
	// MaxHold bounds the bytes held back awaiting a checkpoint (default
	// 64 MiB); a source that exceeds it is cut off.
	MaxHold int
	// Accept is called with the source's hello before the destination
	// accepts; it prepares the output (e.g. starts the destination VM)
	// and returns where the stream goes and where return-path bytes come
	// from (nil: none).
	Accept func(ctx context.Context, h *streamv1.Hello) (out io.Writer, ret io.Reader, err error)
	// Accepting, if set, may add fields to the accept before it is sent
	// (after Accept succeeded): what the destination confirms of the
	// hello's requests.
	Accepting func(*streamv1.Accept)
	// Name is reported to the source.
	Name string
	// History, when set, records QEMU streams that arrive through the page
	// stage in the host's page history, and resolves the source's
	// references to pages of earlier sessions with the same peer.
	History *History
}

type decodeJob struct {
	frame  []byte
	h      wire.BatchHeader
	raw    []byte // decompressed compressible section
	stored []byte
	cp     *wire.Checkpoint
	err    error
	done   chan struct{}
	// buf holds raw when a plugin codec decoded it in place (nil
	// otherwise); the assembler releases it once raw is rebuilt.
	buf codec.Buffer
	// releaseFrame gives frame back to the connection (see
	// bufferedConn) once the batch is rebuilt; nil when there is nothing
	// to give back.
	releaseFrame func()
}

// bufferedConn is a Conn that can lend its receive buffers instead of
// handing them over (a transport session): a destination that gives each
// frame back once its batch is rebuilt receives without allocating. A
// datacenter trip's profile had the receiving daemon zeroing a fresh
// buffer per frame among its larger costs.
type bufferedConn interface {
	RecvBuffer(ctx context.Context) (msg []byte, release func(), err error)
}

// releaseFrameBuf gives the job's frame back, once. Nothing may read frame,
// raw (when it is the frame's) or stored afterwards.
func (j *decodeJob) releaseFrameBuf() {
	if j.releaseFrame != nil {
		j.releaseFrame()
		j.releaseFrame = nil
	}
}

// releaseBuf gives the job's codec Buffer back, once.
func (j *decodeJob) releaseBuf() {
	if j.buf != nil {
		j.buf.Release()
		j.buf = nil
	}
}

// Receive runs the destination side of one stream on c: it answers the
// hello, rebuilds the stream and writes it to the writer Accept returned,
// never past the last verified checkpoint. It returns after the final
// checkpoint was verified, everything written, and the source told.
func Receive(ctx context.Context, c Conn, cfg DestConfig, prog *Progress) (*streamv1.Hello, Summary, error) {
	if prog == nil {
		prog = &Progress{}
	}
	prog.start = time.Now()
	if cfg.Workers <= 0 {
		cfg.Workers = runtime.GOMAXPROCS(0)
	}
	if cfg.MaxHold <= 0 {
		cfg.MaxHold = 64 << 20
	}
	first, err := c.Recv(ctx)
	if err != nil {
		return nil, prog.Snapshot(), fmt.Errorf("wait for hello: %w", err)
	}
	hello := &streamv1.Hello{}
	if err := unmarshalFrame(first, wire.TypeHello, hello); err != nil {
		sendAbort(ctx, c, streamv1.AbortCode_ABORT_CODE_CORRUPT, err)
		return nil, prog.Snapshot(), err
	}
	prog.qemu.Store(hello.Kind == streamv1.StreamKind_STREAM_KIND_QEMU)
	// The history is committed only once the final checkpoint verified;
	// every other way out drops the recording and unpins the sessions.
	var hooks PageHooks
	hist := &destHistory{}
	if cfg.History != nil && cfg.PageStage != nil {
		hooks, hist = cfg.History.receive(hello)
	}
	verified := false
	defer func() { hist.close(verified) }()
	codecs, dec, err := negotiate(hello, cfg, hooks)
	if err != nil {
		sendAbort(ctx, c, streamv1.AbortCode_ABORT_CODE_UNSUPPORTED, err)
		return hello, prog.Snapshot(), err
	}
	var out io.Writer = io.Discard
	var ret io.Reader
	if cfg.Accept != nil {
		if out, ret, err = cfg.Accept(ctx, hello); err != nil {
			sendAbort(ctx, c, streamv1.AbortCode_ABORT_CODE_DESTINATION_FAILED, err)
			return hello, prog.Snapshot(), fmt.Errorf("prepare destination: %w", err)
		}
	}
	acc := &streamv1.Accept{Destination: cfg.Name}
	for id := range codecs {
		acc.Codecs = append(acc.Codecs, uint32(id))
	}
	hist.accept(acc)
	if cfg.Accepting != nil {
		cfg.Accepting(acc)
	}
	f, err := marshalFrame(wire.TypeAccept, acc)
	if err != nil {
		return hello, prog.Snapshot(), err
	}
	if err := c.Send(ctx, f); err != nil {
		return hello, prog.Snapshot(), fmt.Errorf("send accept: %w", err)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	order := make(chan *decodeJob, cfg.Workers*2+2)
	work := make(chan *decodeJob, cfg.Workers*2+2)
	var workers sync.WaitGroup
	for range cfg.Workers {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for j := range work {
				j.raw, j.buf, j.err = decompress(j, codecs)
				close(j.done)
			}
		}()
	}
	var finished atomic.Bool
	// The return-path reader blocks in Read until the destination closes;
	// once the stream is done (or failed), wake it.
	retCtx, stopReturn := context.WithCancel(gctx)
	defer stopReturn()
	if d, ok := ret.(interface{ SetReadDeadline(time.Time) error }); ok {
		stop := context.AfterFunc(retCtx, func() { _ = d.SetReadDeadline(time.Now()) })
		defer stop()
	}
	// Reader: frames in stream order -> jobs.
	g.Go(func() error {
		defer close(work)
		defer close(order)
		var next uint64
		recv := func(ctx context.Context) ([]byte, func(), error) {
			f, err := c.Recv(ctx)
			return f, nil, err
		}
		if l, ok := c.(bufferedConn); ok {
			recv = l.RecvBuffer
		}
		for {
			f, release, err := recv(gctx)
			if err != nil {
				return fmt.Errorf("receive from source: %w", err)
			}
			prog.wire.Add(uint64(len(f)))
			j := &decodeJob{frame: f, done: make(chan struct{})}
			switch wire.TypeOf(f) {
			case wire.TypeBatch:
				// Only batch frames go back: the assembler is done with
				// them once rebuilt. Others stay the job's (they are few).
				j.releaseFrame = release
				h, comp, stored, err := wire.ParseBatch(f)
				if err != nil {
					return err
				}
				if h.Offset != next {
					return fmt.Errorf("batch covers stream offset %d, expected %d: %w", h.Offset, next, ErrProtocol)
				}
				if h.Flags&wire.FlagPages != 0 && hello.PageStage == nil {
					return fmt.Errorf("page-stage batch in a stream without a page stage: %w", ErrProtocol)
				}
				next += uint64(h.Decoded)
				j.h, j.raw, j.stored = h, comp, stored
				select {
				case order <- j:
				case <-gctx.Done():
					return gctx.Err()
				}
				select {
				case work <- j:
				case <-gctx.Done():
					close(j.done)
					return gctx.Err()
				}
			case wire.TypeCheckpoint:
				cp, err := wire.ParseCheckpoint(f)
				if err != nil {
					return err
				}
				j.cp = &cp
				close(j.done)
				select {
				case order <- j:
				case <-gctx.Done():
					return gctx.Err()
				}
				if cp.Final {
					return nil
				}
			case wire.TypeAbort:
				return abortError(f)
			case wire.TypeControl:
			default:
				return fmt.Errorf("unexpected %s frame from source: %w", wire.TypeOf(f), ErrProtocol)
			}
		}
	})
	// Deliverer: verified segments -> the output. Writing to the
	// destination QEMU runs beside the assembler, double-buffered: while
	// QEMU loads one verified segment the assembler rebuilds and hashes
	// the next, and the reader keeps taking frames (and so acknowledging
	// them). Delivering inline stalled the whole receive side for every
	// segment QEMU loaded, which the source saw as a closed window.
	deliver := make(chan []byte)
	free := make(chan []byte, 2)
	free <- nil
	free <- nil
	delivered := make(chan error, 1)
	g.Go(func() error {
		for seg := range deliver {
			// An empty write is skipped: the destination QEMU may already
			// have loaded everything and closed its socket.
			if len(seg) > 0 {
				if _, err := out.Write(seg); err != nil {
					err = fmt.Errorf("deliver stream bytes: %w", err)
					delivered <- err
					return err
				}
				prog.bytesIn.Add(uint64(len(seg)))
			}
			free <- seg[:0]
		}
		delivered <- nil
		return nil
	})
	// Assembler: jobs in order -> verified segments.
	var failed error // set by the assembler, read after Wait
	g.Go(func() (err error) {
		defer func() {
			if err != nil {
				// Stop the reader now: the group cancels only once this
				// returns, after the drain below, and a source that keeps
				// sending would keep the drain going until it finished.
				failed = err
				cancel()
			}
			for j := range order {
				<-j.done
				j.releaseBuf()
			}
		}()
		deliverOpen := true
		finishDelivery := func() error {
			deliverOpen = false
			close(deliver)
			return <-delivered
		}
		defer func() {
			if deliverOpen {
				close(deliver)
			}
		}()
		hasher := blake3.New()
		hold := <-free
		var total uint64
		var sum [32]byte
		for j := range order {
			<-j.done
			if j.err != nil {
				return j.err
			}
			if j.cp == nil {
				start := len(hold)
				var err error
				if j.h.Flags&wire.FlagPages != 0 {
					hold, err = dec.Decode(hold, j.raw, j.stored, int(j.h.Decoded))
				} else {
					hold, err = rawDecoder{}.Decode(hold, j.raw, j.stored, int(j.h.Decoded))
				}
				j.releaseBuf()
				j.releaseFrameBuf()
				if err != nil {
					return fmt.Errorf("rebuild batch at stream offset %d: %w", j.h.Offset, err)
				}
				if got := len(hold) - start; got != int(j.h.Decoded) {
					return fmt.Errorf("batch at stream offset %d rebuilt to %d bytes, frame says %d: %w", j.h.Offset, got, j.h.Decoded, ErrProtocol)
				}
				hasher.Write(hold[start:])
				total += uint64(j.h.Decoded)
				if len(hold) > cfg.MaxHold {
					return fmt.Errorf("source sent %d bytes without a checkpoint (limit %d): %w", len(hold), cfg.MaxHold, ErrProtocol)
				}
				continue
			}
			hasher.Sum(sum[:0])
			if j.cp.Length != total || !bytes.Equal(sum[:], j.cp.Digest[:]) {
				return fmt.Errorf("checkpoint at %d bytes (received %d): %w", j.cp.Length, total, ErrDigestMismatch)
			}
			prog.checkpoints.Add(1)
			select {
			case deliver <- hold:
			case <-gctx.Done():
				return gctx.Err()
			}
			select {
			case hold = <-free:
			case <-gctx.Done():
				return gctx.Err()
			}
			if j.cp.Final {
				// Done says delivered: wait for the last write.
				if err := finishDelivery(); err != nil {
					return err
				}
				f, err := marshalFrame(wire.TypeDone, &streamv1.Done{BytesDelivered: total, DigestVerified: true})
				if err != nil {
					return err
				}
				finished.Store(true)
				stopReturn()
				if err := c.Send(gctx, f); err != nil {
					return fmt.Errorf("confirm to source: %w", err)
				}
				return nil
			}
		}
		return fmt.Errorf("stream ended before its final checkpoint: %w", ErrProtocol)
	})
	// Return path: destination QEMU -> source QEMU.
	if ret != nil {
		g.Go(func() error {
			buf := make([]byte, 64<<10)
			for {
				n, err := ret.Read(buf)
				if n > 0 {
					if serr := c.Send(gctx, wire.AppendBlob(nil, wire.TypeReturn, buf[:n])); serr != nil {
						if finished.Load() {
							return nil
						}
						return fmt.Errorf("send return path: %w", serr)
					}
					prog.ret.Add(uint64(n))
				}
				if err != nil {
					if errors.Is(err, io.EOF) || finished.Load() || gctx.Err() != nil {
						return nil
					}
					return fmt.Errorf("read return path: %w", err)
				}
			}
		})
	}
	err = g.Wait()
	workers.Wait()
	if failed != nil && !errors.Is(err, ErrAborted) {
		// The assembler's failure caused the cancellations the others saw.
		err = failed
	}
	sum := prog.Snapshot()
	sum.History = hist.sum
	if finished.Load() && (err == nil || errors.Is(err, context.Canceled)) {
		verified = true
		return hello, sum, nil
	}
	if err == nil {
		err = errors.New("stream ended early")
	}
	code := streamv1.AbortCode_ABORT_CODE_INTERNAL
	switch {
	case errors.Is(err, ErrDigestMismatch):
		code = streamv1.AbortCode_ABORT_CODE_DIGEST_MISMATCH
	case errors.Is(err, ErrProtocol), errors.Is(err, wire.ErrMalformed):
		code = streamv1.AbortCode_ABORT_CODE_CORRUPT
	}
	if !errors.Is(err, ErrAborted) {
		sendAbort(context.WithoutCancel(ctx), c, code, err)
	}
	return hello, sum, err
}

func negotiate(h *streamv1.Hello, cfg DestConfig, hooks PageHooks) (map[uint8]codec.Codec, BatchDecoder, error) {
	if h.FrameVersion != wire.Version {
		return nil, nil, fmt.Errorf("source speaks frame version %d, this host %d", h.FrameVersion, wire.Version)
	}
	if h.Digest != digestName {
		return nil, nil, fmt.Errorf("source digest %q, this host speaks %q", h.Digest, digestName)
	}
	codecs := map[uint8]codec.Codec{}
	for _, o := range h.Codecs {
		c, ok := cfg.Codecs[o.Algorithm]
		if !ok {
			return nil, nil, fmt.Errorf("no %s codec on this host", o.Algorithm)
		}
		if o.Id == 0 || o.Id > 255 {
			return nil, nil, fmt.Errorf("codec %s has id %d: %w", o.Algorithm, o.Id, ErrProtocol)
		}
		codecs[uint8(o.Id)] = c
	}
	var dec BatchDecoder
	if h.PageStage != nil && h.PageStage.Enabled {
		if cfg.PageStage == nil {
			return nil, nil, errors.New("source uses the page stage, this host has none")
		}
		var err error
		if dec, err = cfg.PageStage(h.PageStage, hooks); err != nil {
			return nil, nil, fmt.Errorf("page stage: %w", err)
		}
	}
	return codecs, dec, nil
}

// decompress returns the batch's compressible section, decompressed. A
// plugin codec (codec.Leaser) decodes it in its shared memory and the
// result stays there, in the returned Buffer, until the assembler has
// rebuilt the batch from it; the assembler's one copy out is the only one.
func decompress(j *decodeJob, codecs map[uint8]codec.Codec) ([]byte, codec.Buffer, error) {
	if j.h.Codec == 0 {
		return j.raw, nil, nil
	}
	c, ok := codecs[j.h.Codec]
	if !ok {
		return nil, nil, fmt.Errorf("batch at stream offset %d uses codec %d, not negotiated: %w", j.h.Offset, j.h.Codec, ErrProtocol)
	}
	var out []byte
	var buf codec.Buffer
	var err error
	if l, ok := c.(codec.Leaser); ok {
		buf = l.Lease(len(j.raw))
		out, err = buf.Decode(append(buf.Input(), j.raw...), int(j.h.Raw))
	} else {
		out, err = c.Decode(make([]byte, 0, j.h.Raw), j.raw, int(j.h.Raw))
	}
	if err == nil && len(out) != int(j.h.Raw) {
		err = fmt.Errorf("decompressed to %d bytes, frame says %d: %w", len(out), j.h.Raw, ErrProtocol)
	}
	if err != nil {
		if buf != nil {
			buf.Release()
		}
		return nil, nil, fmt.Errorf("decompress batch at stream offset %d: %w", j.h.Offset, err)
	}
	return out, buf, nil
}
