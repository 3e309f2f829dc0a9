//go:build linux

package modeslab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"time"

	"github.com/dwcp/dwcp/host/internal/pb/streamv1"
	"github.com/dwcp/dwcp/host/pipeline"
	"github.com/dwcp/dwcp/host/wanlab"
	"github.com/dwcp/dwcp/sdk/codec"
)

// TransferConfig configures Transfer.
type TransferConfig struct {
	// Codecs are the source's numbered codecs; the destination decodes
	// with the same codecs, by algorithm.
	Codecs []pipeline.Codec
	// Policy picks each batch's codec and level.
	Policy pipeline.Policy
	// BatchBytes and CheckpointBytes: 0 for the pipeline's defaults.
	BatchBytes, CheckpointBytes int
	// Progress, when set, is the source's live counters.
	Progress *pipeline.Progress
	// Workers encode at the source and decode at the destination
	// (default Workers()).
	Workers int
}

// Workers is the number of encode workers an experiment gives the
// pipeline and the controller: this machine's CPU count. The lab raises
// the process's GOMAXPROCS by one per forwarder thread while it runs
// (wanlab's reserveProcs), so GOMAXPROCS, the pipeline's and the
// controller's default, would size the encoders for cores this machine
// does not have; a migration's own process runs no lab.
func Workers() int { return runtime.NumCPU() }

// TransferResult is what one transfer did.
type TransferResult struct {
	// Source is the sender's summary: stream bytes read, frame bytes sent.
	Source pipeline.Summary
	// Delivered counts the stream bytes the destination wrote.
	Delivered int64
	// Elapsed runs from the start of Send to its return, which is when the
	// destination confirmed that every byte was verified and delivered.
	Elapsed time.Duration
}

// DestCodecs indexes codecs by algorithm, as a destination finds them.
func DestCodecs(list []pipeline.Codec) map[string]codec.Codec {
	m := make(map[string]codec.Codec, len(list))
	for _, c := range list {
		if c.Codec != nil {
			m[c.Codec.Capabilities().Algorithm] = c.Codec
		}
	}
	return m
}

// Transfer carries in from p.Src to p.Dst through the pipeline and writes
// what arrives to out. The session is used up: a pipeline stream ends it.
func Transfer(ctx context.Context, p *Pair, in io.Reader, out io.Writer, cfg TransferConfig) (TransferResult, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if cfg.Workers <= 0 {
		cfg.Workers = Workers()
	}
	var res TransferResult
	cw := &countingWriter{w: out}
	type received struct {
		sum pipeline.Summary
		err error
	}
	done := make(chan received, 1)
	go func() {
		_, sum, err := pipeline.Receive(ctx, p.Dst, pipeline.DestConfig{Codecs: DestCodecs(cfg.Codecs), Workers: cfg.Workers,
			Accept: func(context.Context, *streamv1.Hello) (io.Writer, io.Reader, error) { return cw, nil, nil }}, nil)
		done <- received{sum, err}
	}()
	start := time.Now()
	sum, err := pipeline.Send(ctx, in, p.Src, pipeline.SourceConfig{
		Codecs: cfg.Codecs, Policy: cfg.Policy, BatchBytes: cfg.BatchBytes, CheckpointBytes: cfg.CheckpointBytes,
		Workers: cfg.Workers,
	}, cfg.Progress)
	res.Elapsed = time.Since(start)
	res.Source = sum
	if err != nil {
		cancel() // the destination may wait for frames that will not come
	}
	r := <-done
	res.Delivered = cw.n
	if err != nil || r.err != nil {
		return res, fmt.Errorf("lab transfer: send: %v; receive: %v: %w", err, r.err, errors.Join(err, r.err))
	}
	return res, nil
}

// TransferBytes carries data and checks that the destination wrote the
// same bytes, in order, without keeping a copy.
func TransferBytes(ctx context.Context, p *Pair, data []byte, cfg TransferConfig) (TransferResult, error) {
	cmp := &compareWriter{want: data}
	res, err := Transfer(ctx, p, bytes.NewReader(data), cmp, cfg)
	if err != nil {
		return res, err
	}
	if cmp.err != nil {
		return res, cmp.err
	}
	if cmp.off != len(data) {
		return res, fmt.Errorf("lab transfer: %d of %d bytes delivered", cmp.off, len(data))
	}
	return res, nil
}

// TransferFor carries data, repeated, from p.Src to p.Dst for d: the
// source stops reading d after its first read, and the transfer ends when
// the destination has verified what was sent. Every byte delivered is
// checked. On a profile whose schedule cycles, d a whole number of cycles
// measures the average of the cycle: a fixed amount of data would instead
// end in one phase or the next depending on small differences in speed
// (docs/modes.md).
func TransferFor(ctx context.Context, p *Pair, data []byte, d time.Duration, cfg TransferConfig) (TransferResult, error) {
	in := &timedReader{loopReader: loopReader{data: data}, d: d}
	out := &loopCompareWriter{want: data}
	res, err := Transfer(ctx, p, in, out, cfg)
	if err != nil {
		return res, err
	}
	return res, out.check(in.n.Load())
}

// timedReader is a loopReader that ends its stream d after its first read.
type timedReader struct {
	loopReader
	d     time.Duration
	until time.Time
}

func (r *timedReader) Read(p []byte) (int, error) {
	if r.until.IsZero() {
		r.until = time.Now().Add(r.d)
	} else if time.Now().After(r.until) {
		return 0, io.EOF
	}
	return r.loopReader.Read(p)
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// compareWriter checks what it is given against want.
type compareWriter struct {
	want []byte
	off  int
	err  error
}

func (c *compareWriter) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	if len(p) > len(c.want)-c.off {
		c.err = fmt.Errorf("lab transfer: destination wrote more than the %d bytes sent", len(c.want))
		return 0, c.err
	}
	if !bytes.Equal(p, c.want[c.off:c.off+len(p)]) {
		c.err = fmt.Errorf("lab transfer: delivered bytes differ from the sent ones within [%d, %d)", c.off, c.off+len(p))
		return 0, c.err
	}
	c.off += len(p)
	return len(p), nil
}

// PlainTCP carries data over one TCP connection from h0 to h1, with no TLS,
// no framing and no compression: the baseline a transfer is compared with.
// The time runs from the dial to the receiver's end of stream.
func PlainTCP(ctx context.Context, lab *wanlab.Lab, data []byte) (time.Duration, error) {
	took, _, err := plainTCP(ctx, lab, bytes.NewReader(data), int64(len(data)))
	return took, err
}

// PlainTCPFor is PlainTCP sending data, repeated, for d (TransferFor's
// baseline). It returns the time to the receiver's end of stream and the
// bytes delivered.
func PlainTCPFor(ctx context.Context, lab *wanlab.Lab, data []byte, d time.Duration) (time.Duration, int64, error) {
	return plainTCP(ctx, lab, &timedReader{loopReader: loopReader{data: data}, d: d}, -1)
}

// plainTCP sends src; want is the byte count the receiver must see (-1:
// whatever was sent).
func plainTCP(ctx context.Context, lab *wanlab.Lab, src io.Reader, want int64) (time.Duration, int64, error) {
	h0, h1 := lab.Host(0), lab.Host(1)
	ln, err := lab.Listen(h1, "tcp", net.JoinHostPort(h1.Addr.String(), "0"))
	if err != nil {
		return 0, 0, fmt.Errorf("plain tcp: listen on %s: %w", h1, err)
	}
	type got struct {
		n   int64
		err error
	}
	recv := make(chan got, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			recv <- got{0, err}
			return
		}
		defer c.Close()
		stop := context.AfterFunc(ctx, func() { c.Close() })
		defer stop()
		n, err := io.Copy(io.Discard, c)
		recv <- got{n, err}
	}()
	start := time.Now()
	c, err := lab.Dial(ctx, h0, "tcp", ln.Addr().String())
	if err != nil {
		ln.Close()
		<-recv
		return 0, 0, fmt.Errorf("plain tcp: dial %s: %w", h1, err)
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	sent, werr := io.Copy(c, src)
	stop()
	c.Close()
	r := <-recv
	took := time.Since(start)
	ln.Close()
	if want < 0 {
		want = sent
	}
	switch {
	case werr != nil:
		return took, r.n, fmt.Errorf("plain tcp: write: %w", werr)
	case r.err != nil:
		return took, r.n, fmt.Errorf("plain tcp: read: %w", r.err)
	case r.n != want || sent != want:
		return took, r.n, fmt.Errorf("plain tcp: sent %d, delivered %d of %d bytes", sent, r.n, want)
	}
	return took, r.n, nil
}
