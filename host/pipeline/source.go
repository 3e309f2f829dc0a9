package pipeline

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dwcp/dwcp/host/internal/pb/streamv1"
	"github.com/dwcp/dwcp/host/pagestore"
	"github.com/dwcp/dwcp/host/qemustream"
	"github.com/dwcp/dwcp/host/wire"
	"github.com/dwcp/dwcp/sdk/codec"
	"github.com/zeebo/blake3"
	"golang.org/x/sync/errgroup"
)

// Kind says how the source treats its input.
type Kind int

const (
	// KindAuto: QEMU-aware when the input starts like a QEMU migration
	// stream, raw otherwise.
	KindAuto Kind = iota
	KindRaw
	KindQEMU
)

// Policy chooses the codec and level of each batch and learns from what
// happened to the previous ones. Choose and Observe are called from
// different goroutines, never concurrently with themselves.
type Policy interface {
	Choose() Choice
	Observe(BatchResult)
}

// BatchResult is what one batch cost.
type BatchResult struct {
	Choice   Choice
	Decoded  int           // stream bytes covered
	Wire     int           // frame bytes sent
	Encode   time.Duration // compression time (one worker)
	SendWait time.Duration // time Send blocked (transport backpressure)
}

// FixedPolicy always makes the same choice.
type FixedPolicy Choice

func (p FixedPolicy) Choose() Choice      { return Choice(p) }
func (p FixedPolicy) Observe(BatchResult) {}

// SourceConfig configures Send.
type SourceConfig struct {
	Codecs []Codec
	// Policy defaults to the first codec at level 0 (or storing, without
	// codecs).
	Policy Policy
	// PageStage builds page-aware batches for QEMU streams; nil sends
	// batches of raw stream bytes.
	PageStage BatchBuilderFactory
	Kind      Kind
	// BatchBytes is the stream bytes per batch (default 1 MiB).
	BatchBytes int
	// CheckpointBytes bounds the stream bytes between digest checkpoints,
	// and so what the destination holds back (default 16 MiB).
	CheckpointBytes int
	// Workers compress in parallel (default GOMAXPROCS).
	Workers int
	// Name labels the stream in the hello.
	Name string
	// ExpectedLength is the input length when known.
	ExpectedLength uint64
	// ReturnPath receives the destination's return-path bytes (QEMU's
	// return path); nil refuses any.
	ReturnPath io.Writer
	// Mode is reported to the destination.
	Mode string
	// Hello lets the caller add fields (migration id, destination config).
	Hello func(*streamv1.Hello)
	// CheckAccept, if set, sees the destination's accept before anything
	// else happens: an error aborts the session (the destination is told)
	// before any input is read. A migration refuses there a destination
	// that did not confirm what the hello asked of it.
	CheckAccept func(*streamv1.Accept) error
	// Accepted, if set, is called once the destination accepted the
	// stream, before any input is read (a migration starts QEMU's side
	// only then).
	Accepted func()
	// History, when set, records the session in the host's page history
	// and sends pages the destination holds from earlier sessions as
	// references (QEMU streams through the page stage only).
	History *History
}

// Summary reports a finished (or failed) transfer.
type Summary struct {
	BytesIn     uint64 // stream bytes read (source) or delivered (destination)
	WireBytes   uint64 // frame bytes sent or received
	Batches     uint64
	Checkpoints uint64
	QEMU        bool // the stream was recognised as QEMU's
	Pages       PageStats
	History     HistorySummary
	ReturnBytes uint64
	Elapsed     time.Duration
}

// Ratio is stream bytes per wire byte.
func (s Summary) Ratio() float64 {
	if s.WireBytes == 0 {
		return 0
	}
	return float64(s.BytesIn) / float64(s.WireBytes)
}

// Progress is a live view of a transfer; read it with Snapshot.
type Progress struct {
	bytesIn, wire, batches, checkpoints, ret atomic.Uint64
	qemu                                     atomic.Bool
	start                                    time.Time
}

// Snapshot returns the counters so far.
func (p *Progress) Snapshot() Summary {
	return Summary{
		BytesIn: p.bytesIn.Load(), WireBytes: p.wire.Load(), Batches: p.batches.Load(),
		Checkpoints: p.checkpoints.Load(), ReturnBytes: p.ret.Load(), QEMU: p.qemu.Load(),
		Elapsed: time.Since(p.start),
	}
}

// job is one frame on its way out, in stream order.
type job struct {
	choice  Choice
	batch   Batch
	frame   []byte
	pooled  bool // frame came from getFrame: it goes back once sent
	encode  time.Duration
	err     error
	done    chan struct{}
	release func()
	// buf is the codec Buffer the batch was built in (nil: private
	// memory), leased from codec bufCodec; whoever finishes the job
	// with it releases it, as soon as the frame no longer needs it.
	buf      codec.Buffer
	bufCodec uint8
}

// releaseBuf gives the job's codec Buffer back, once.
func (j *job) releaseBuf() {
	if j.buf != nil {
		j.buf.Release()
		j.buf = nil
	}
}

// Send reads in until EOF and carries it over c. It returns when the
// destination confirmed that every byte was verified and delivered.
func Send(ctx context.Context, in io.Reader, c Conn, cfg SourceConfig, prog *Progress) (Summary, error) {
	if prog == nil {
		prog = &Progress{}
	}
	prog.start = time.Now()
	cfg = cfg.withDefaults()
	codecs := map[uint8]Codec{}
	for _, cd := range cfg.Codecs {
		if cd.ID == 0 {
			return Summary{}, fmt.Errorf("codec %s: id 0 is reserved for stored batches", cd.Algorithm)
		}
		codecs[cd.ID] = cd
	}

	// Peek at the input to decide whether it is a QEMU stream.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	chunks := newChunkReader(gctx, in, g)
	br := bufio.NewReaderSize(chunks, 256<<10)
	isQEMU := cfg.Kind == KindQEMU
	if cfg.Kind == KindAuto {
		// Only auto-detection reads before the handshake: a live
		// migration's input exists only once the destination accepted.
		prefix, _ := br.Peek(8)
		isQEMU = qemustream.Detect(prefix)
	}
	prog.qemu.Store(isQEMU)

	hello := &streamv1.Hello{
		FrameVersion: wire.Version, Name: cfg.Name, ExpectedLength: cfg.ExpectedLength,
		Digest: digestName, Mode: cfg.Mode, ReturnPath: cfg.ReturnPath != nil,
		Kind: streamv1.StreamKind_STREAM_KIND_RAW,
	}
	if isQEMU {
		hello.Kind = streamv1.StreamKind_STREAM_KIND_QEMU
	}
	for _, cd := range cfg.Codecs {
		hello.Codecs = append(hello.Codecs, &streamv1.CodecOffer{Id: uint32(cd.ID), Algorithm: cd.Algorithm})
	}
	var builder BatchBuilder = &rawBuilder{}
	pageStage := isQEMU && cfg.PageStage != nil
	var histID pagestore.SessionID
	if pageStage {
		hello.PageStage = cfg.PageStage.Params()
		if cfg.History != nil {
			histID = cfg.History.offer(hello)
		}
	}
	if cfg.Hello != nil {
		cfg.Hello(hello)
	}
	acc, err := handshakeSource(ctx, c, hello)
	if err == nil && cfg.CheckAccept != nil {
		if err = cfg.CheckAccept(acc); err != nil {
			sendAbort(ctx, c, streamv1.AbortCode_ABORT_CODE_UNSUPPORTED, err)
		}
	}
	if err != nil {
		cancel()
		_ = g.Wait()
		return prog.Snapshot(), err
	}
	// The history's known set is complete before the first page is
	// encoded: the encoder asks it about every page.
	var hist *sourceHistory
	var hooks PageHooks
	if histID != "" {
		hooks, hist = cfg.History.start(histID, hello, acc, int(min(cfg.ExpectedLength/pagestore.PageSize, 1<<30)))
	}
	confirmedOK := false
	defer func() { hist.finish(confirmedOK) }()
	if pageStage {
		builder = cfg.PageStage.NewBuilder(hooks)
	}

	if cfg.Accepted != nil {
		cfg.Accepted()
	}
	order := make(chan *job, cfg.Workers*2+2)
	work := make(chan *job, cfg.Workers*2+2)
	confirmed := make(chan struct{})
	var aborted error // set by the incoming goroutine, read after Wait
	var failed error  // set by the sender, read after Wait

	// Compression workers.
	var workers sync.WaitGroup
	for range cfg.Workers {
		workers.Add(1)
		go func() {
			defer workers.Done()
			var scratch []byte
			for j := range work {
				scratch = encodeJob(j, codecs, scratch)
				j.releaseBuf()
				close(j.done)
			}
		}()
	}
	// Segmenter: input -> batches -> jobs, with checkpoints.
	g.Go(func() error {
		defer close(work)
		defer close(order)
		s := &segmenter{cfg: cfg, codecs: codecs, builder: builder, order: order, work: work, ctx: gctx, prog: prog, hasher: blake3.New()}
		defer s.releaseBuf()
		chunks.onStall = s.stall
		var err error
		if isQEMU {
			err = s.runQEMU(br)
		} else {
			err = s.runRaw(br)
		}
		if err != nil {
			return err
		}
		return s.finish()
	})
	// Sender: jobs in order -> frames on the connection.
	g.Go(func() (err error) {
		defer func() {
			if err != nil {
				// Stop the segmenter now: the group cancels only once
				// this returns, after the drain below, and a live input
				// would keep the drain going for as long as it flows.
				failed = err
				cancel()
			}
			// Drain so workers and the segmenter never block on us.
			for j := range order {
				<-j.done
				if j.release != nil {
					j.release()
				}
			}
		}()
		for j := range order {
			<-j.done
			if j.err != nil {
				return j.err
			}
			t0 := time.Now()
			if err := c.Send(gctx, j.frame); err != nil {
				return fmt.Errorf("send frame: %w", err)
			}
			prog.wire.Add(uint64(len(j.frame)))
			if j.batch.Decoded > 0 {
				prog.batches.Add(1)
				cfg.Policy.Observe(BatchResult{Choice: j.choice, Decoded: j.batch.Decoded, Wire: len(j.frame), Encode: j.encode, SendWait: time.Since(t0)})
			} else {
				prog.checkpoints.Add(1)
			}
			if j.pooled {
				putFrame(j.frame)
				j.frame, j.pooled = nil, false
			}
			if j.release != nil {
				j.release()
			}
		}
		return nil
	})
	// Incoming: return path, the final confirmation, aborts.
	g.Go(func() error {
		for {
			f, err := c.Recv(gctx)
			if err != nil {
				select {
				case <-confirmed:
					return nil
				default:
				}
				return fmt.Errorf("receive from destination: %w", err)
			}
			switch wire.TypeOf(f) {
			case wire.TypeReturn:
				body, _ := wire.ParseBlob(f, wire.TypeReturn)
				if cfg.ReturnPath == nil {
					return fmt.Errorf("destination sent return-path bytes nobody asked for: %w", ErrProtocol)
				}
				if _, err := cfg.ReturnPath.Write(body); err != nil {
					return fmt.Errorf("write return path: %w", err)
				}
				prog.ret.Add(uint64(len(body)))
			case wire.TypeDone:
				var d streamv1.Done
				if err := unmarshalFrame(f, wire.TypeDone, &d); err != nil {
					return err
				}
				if !d.DigestVerified || d.BytesDelivered != prog.bytesIn.Load() {
					return fmt.Errorf("destination confirmed %d bytes (verified=%v), source read %d: %w",
						d.BytesDelivered, d.DigestVerified, prog.bytesIn.Load(), ErrProtocol)
				}
				close(confirmed)
				cancel() // stop the chunk reader if it still waits
				return nil
			case wire.TypeAbort:
				aborted = abortError(f)
				return aborted
			case wire.TypeControl:
			default:
				return fmt.Errorf("unexpected %s frame from destination: %w", wire.TypeOf(f), ErrProtocol)
			}
		}
	})
	err = g.Wait()
	workers.Wait()
	switch {
	case aborted != nil:
		// The peer's reason explains whatever else broke first.
		err = aborted
	case failed != nil:
		// The sender's failure caused the cancellations the others saw.
		err = failed
	}
	sum := prog.Snapshot()
	sum.Pages = builder.Stats()
	if hist != nil {
		sum.History = hist.sum
	}
	select {
	case <-confirmed:
		// The destination verified every byte: both hosts now hold the
		// session's pages.
		confirmedOK = true
		return sum, nil
	default:
	}
	if err == nil || errors.Is(err, context.Canceled) && ctx.Err() == nil {
		err = errors.New("stream ended without the destination's confirmation")
	}
	if !errors.Is(err, ErrAborted) {
		if why := peerAbort(ctx, c); why != nil {
			return sum, fmt.Errorf("%w (then: %v)", why, err)
		}
		sendAbort(context.WithoutCancel(ctx), c, streamv1.AbortCode_ABORT_CODE_INTERNAL, err)
	}
	return sum, err
}

func (cfg SourceConfig) withDefaults() SourceConfig {
	if cfg.BatchBytes <= 0 {
		cfg.BatchBytes = 1 << 20
	}
	if cfg.BatchBytes > wire.MaxBatchDecoded/2 {
		cfg.BatchBytes = wire.MaxBatchDecoded / 2
	}
	if cfg.CheckpointBytes <= 0 {
		cfg.CheckpointBytes = 16 << 20
	}
	if cfg.Workers <= 0 {
		cfg.Workers = runtime.GOMAXPROCS(0)
	}
	if cfg.Policy == nil {
		if len(cfg.Codecs) > 0 {
			cfg.Policy = FixedPolicy{Codec: cfg.Codecs[0].ID, Level: cfg.Codecs[0].Codec.Capabilities().Levels.Default}
		} else {
			cfg.Policy = FixedPolicy{}
		}
	}
	return cfg
}

func handshakeSource(ctx context.Context, c Conn, hello *streamv1.Hello) (*streamv1.Accept, error) {
	f, err := marshalFrame(wire.TypeHello, hello)
	if err != nil {
		return nil, err
	}
	if err := c.Send(ctx, f); err != nil {
		return nil, fmt.Errorf("send hello: %w", err)
	}
	reply, err := c.Recv(ctx)
	if err != nil {
		return nil, fmt.Errorf("wait for the destination's accept: %w", err)
	}
	switch wire.TypeOf(reply) {
	case wire.TypeAbort:
		return nil, abortError(reply)
	case wire.TypeAccept:
	default:
		return nil, fmt.Errorf("destination answered hello with a %s frame: %w", wire.TypeOf(reply), ErrProtocol)
	}
	var acc streamv1.Accept
	if err := unmarshalFrame(reply, wire.TypeAccept, &acc); err != nil {
		return nil, err
	}
	ok := map[uint32]bool{}
	for _, id := range acc.Codecs {
		ok[id] = true
	}
	for _, o := range hello.Codecs {
		if !ok[o.Id] {
			return nil, fmt.Errorf("destination %s cannot decode codec %s: %w", acc.Destination, o.Algorithm, ErrProtocol)
		}
	}
	return &acc, nil
}

// encodeJob compresses a batch into its frame. scratch is the worker's
// reusable compression buffer.
func encodeJob(j *job, codecs map[uint8]Codec, scratch []byte) []byte {
	raw, stored := j.batch.Compressible, j.batch.Stored
	h := wire.BatchHeader{Offset: j.batch.Offset, Decoded: uint32(j.batch.Decoded), Raw: uint32(len(raw))}
	if j.batch.Pages {
		h.Flags = wire.FlagPages
	}
	comp := raw
	if cd, ok := codecs[j.choice.Codec]; ok && len(raw) > 0 {
		t0 := time.Now()
		var out []byte
		var err error
		if j.buf != nil && j.bufCodec == j.choice.Codec {
			// Built in a Buffer of this codec: encoded in place, the
			// output read where the codec wrote it.
			out, err = j.buf.Encode(raw, j.choice.Level)
		} else if out, err = cd.Codec.Encode(scratch[:0], raw, j.choice.Level); err == nil {
			scratch = out
		}
		j.encode = time.Since(t0)
		if err != nil {
			j.err = fmt.Errorf("compress batch at stream offset %d with %s level %d: %w", j.batch.Offset, cd.Algorithm, j.choice.Level, err)
			return scratch
		}
		// Keep compression only when it pays.
		if len(out) < len(raw) {
			comp = out
			h.Codec, h.Level = cd.ID, int8(j.choice.Level)
		}
	}
	j.frame, j.pooled = wire.AppendBatch(getFrame(32+len(comp)+len(stored)), h, comp, stored), true
	return scratch
}

// framePool recycles batch frames: a frame is done with once Send has
// returned (Conn's contract), and a session's frames are all about one
// batch in size, so steady traffic allocates (and zeroes, and collects)
// none. A datacenter trip's profile had a fresh frame per batch among the
// sending daemon's larger costs.
var framePool sync.Pool // of *[]byte

// getFrame returns an empty slice with room for n bytes.
func getFrame(n int) []byte {
	if v := framePool.Get(); v != nil {
		if b := *v.(*[]byte); cap(b) >= n {
			return b[:0]
		}
	}
	return make([]byte, 0, n)
}

// putFrame makes b available to getFrame; b must not be used afterwards.
func putFrame(b []byte) {
	framePool.Put(&b)
}

// segmenter turns input into ordered jobs. It runs on one goroutine; stall
// is called on that same goroutine, from inside a Read.
type segmenter struct {
	cfg     SourceConfig
	codecs  map[uint8]Codec
	builder BatchBuilder
	// buf is the codec Buffer the builder is building the current batch
	// in (nil: the builder's own memory), leased from codec bufCodec.
	buf      codec.Buffer
	bufCodec uint8
	order    chan<- *job
	work     chan<- *job
	ctx      context.Context
	prog     *Progress
	hasher   *blake3.Hasher
	offset   uint64 // stream bytes emitted in batches
	sinceCP  int
	err      error
}

func (s *segmenter) add(b []byte) {
	s.hasher.Write(b)
	s.prog.bytesIn.Add(uint64(len(b)))
}

// emit closes the current batch into a job.
func (s *segmenter) emit() error {
	choice := s.cfg.Policy.Choose()
	next := s.lease(choice)
	var b Batch
	var err error
	if next != nil {
		b, err = s.builder.(lendingBuilder).FlushInto(next.Input())
	} else {
		b, err = s.builder.Flush()
	}
	if err != nil || b.Decoded == 0 {
		if next != nil {
			next.Release()
		}
		return err
	}
	b.Offset = s.offset
	s.offset += uint64(b.Decoded)
	s.sinceCP += b.Decoded
	j := &job{choice: choice, batch: b, done: make(chan struct{}), release: b.Release, buf: s.buf, bufCodec: s.bufCodec}
	s.buf, s.bufCodec = next, choice.Codec
	select {
	case s.order <- j:
	case <-s.ctx.Done():
		j.releaseBuf()
		return s.ctx.Err()
	}
	select {
	case s.work <- j:
	case <-s.ctx.Done():
		j.releaseBuf()
		close(j.done)
		return s.ctx.Err()
	}
	return nil
}

// lease returns a codec Buffer to build the next batch in when the codec
// just chosen offers them (a plugin codec: the batch is then built in its
// shared memory and encoded in place) and the builder can build in lent
// memory; nil otherwise. The next batch is likely to get the same choice;
// when it does not, the worker encodes it from the Buffer by copying, as
// from any other memory.
func (s *segmenter) lease(choice Choice) codec.Buffer {
	if s.builder.Pending() == 0 {
		return nil
	}
	if _, ok := s.builder.(lendingBuilder); !ok {
		return nil
	}
	l, ok := s.codecs[choice.Codec].Codec.(codec.Leaser)
	if !ok {
		return nil
	}
	// Room for a batch closed by size: BatchBytes plus the input chunk or
	// page that crossed it and the page stage's records. A batch that
	// outgrows it anyway (a large opaque item) is reallocated by append
	// and encoded from there with one copy.
	return l.Lease(s.cfg.BatchBytes + 128<<10)
}

// releaseBuf gives back the Buffer of a batch that will not be emitted.
func (s *segmenter) releaseBuf() {
	if s.buf != nil {
		s.buf.Release()
		s.buf = nil
	}
}

func (s *segmenter) checkpoint(final bool) error {
	cp := wire.Checkpoint{Length: s.offset, Final: final}
	s.hasher.Sum(cp.Digest[:0])
	j := &job{frame: wire.AppendCheckpoint(nil, cp), done: make(chan struct{})}
	close(j.done)
	s.sinceCP = 0
	select {
	case s.order <- j:
		return nil
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
}

// stall runs when the input has nothing buffered: ship what is pending so
// that a live stream never waits in a half-full batch, and vouch for it.
func (s *segmenter) stall() {
	if s.err != nil || (s.builder.Pending() == 0 && s.sinceCP == 0) {
		return
	}
	// A batch closed by size just before the pause still needs its
	// checkpoint, or the destination would hold it back.
	if s.err = s.emit(); s.err == nil {
		s.err = s.checkpoint(false)
	}
}

func (s *segmenter) after() error {
	if s.err != nil {
		return s.err
	}
	if s.builder.Pending() >= s.cfg.BatchBytes {
		if err := s.emit(); err != nil {
			return err
		}
	}
	if s.sinceCP >= s.cfg.CheckpointBytes {
		return s.checkpoint(false)
	}
	return nil
}

func (s *segmenter) runRaw(r io.Reader) error {
	buf := make([]byte, 64<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			s.add(buf[:n])
			s.builder.AddOpaque(buf[:n])
			if err := s.after(); err != nil {
				return err
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read input: %w", err)
		}
	}
}

func (s *segmenter) runQEMU(r io.Reader) error {
	qr := qemustream.NewReader(r, qemustream.Options{Lenient: true, Live: true})
	for {
		it, err := qr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read QEMU stream: %w", err)
		}
		s.add(it.Bytes)
		if it.Kind == qemustream.Page {
			s.builder.AddPage(it.Block, it.Addr, it.Bytes)
		} else {
			s.builder.AddOpaque(it.Bytes)
		}
		if err := s.after(); err != nil {
			return err
		}
	}
}

func (s *segmenter) finish() error {
	if s.err != nil {
		return s.err
	}
	if err := s.emit(); err != nil {
		return err
	}
	return s.checkpoint(true)
}
