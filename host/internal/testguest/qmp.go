package testguest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"
)

// maxQMPLine bounds one QMP message. QEMU's largest replies (query-qmp-schema) are
// a few hundred KiB; anything far beyond that is a broken peer, not a reply.
const maxQMPLine = 8 << 20

// ErrQMPClosed is returned by commands issued after the QMP connection ended.
var ErrQMPClosed = errors.New("qmp connection closed")

// QMPError is an error reply from QEMU ({"error": {"class", "desc"}}).
type QMPError struct {
	Command string `json:"-"`
	Class   string `json:"class"`
	Desc    string `json:"desc"`
}

func (e *QMPError) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// qmpMessage is any message QEMU sends: the greeting, a reply or an event.
type qmpMessage struct {
	Greeting json.RawMessage `json:"QMP"`
	Return   json.RawMessage `json:"return"`
	Error    *QMPError       `json:"error"`
	Event    string          `json:"event"`
	ID       json.RawMessage `json:"id"`
}

type qmpKind int

const (
	qmpGreeting qmpKind = iota + 1
	qmpReply
	qmpEvent
)

// decodeQMP classifies one line from QEMU. Replies carry the numeric id the client
// sent; a reply without one cannot be matched to a command and is an error.
func decodeQMP(line []byte) (qmpMessage, qmpKind, uint64, error) {
	var m qmpMessage
	dec := json.NewDecoder(bytes.NewReader(line))
	if err := dec.Decode(&m); err != nil {
		return m, 0, 0, fmt.Errorf("decode qmp message: %w", err)
	}
	if dec.More() {
		return m, 0, 0, errors.New("decode qmp message: trailing data after the JSON object")
	}
	switch {
	case m.Greeting != nil:
		return m, qmpGreeting, 0, nil
	case m.Event != "":
		return m, qmpEvent, 0, nil
	case m.Return != nil || m.Error != nil:
		if m.ID == nil {
			return m, 0, 0, errors.New("decode qmp reply: no id")
		}
		id, err := strconv.ParseUint(string(m.ID), 10, 64)
		if err != nil {
			return m, 0, 0, fmt.Errorf("decode qmp reply id %.40q: %w", m.ID, err)
		}
		return m, qmpReply, id, nil
	default:
		return m, 0, 0, errors.New("decode qmp message: neither greeting, reply nor event")
	}
}

// readQMPLine reads one newline-terminated message of at most maxQMPLine bytes.
func readQMPLine(r *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > maxQMPLine {
			return nil, fmt.Errorf("read qmp message: longer than %d bytes", maxQMPLine)
		}
		switch {
		case err == nil:
			return line, nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF) && len(line) > 0:
			return nil, fmt.Errorf("read qmp message: %w", io.ErrUnexpectedEOF)
		default:
			return nil, err
		}
	}
}

type qmpResult struct {
	ret json.RawMessage
	err error
}

// qmpClient is a QMP connection with one reader goroutine, owned by the client and
// ended by Close. Replies are matched to commands by id, so a command abandoned by
// its context cannot hand its late reply to the next one. Events are read and
// dropped: nothing here needs them, and an unread socket would stall QEMU.
type qmpClient struct {
	conn net.Conn
	rd   *bufio.Reader

	writeMu sync.Mutex

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]chan qmpResult
	readErr error

	done chan struct{}
}

// dialQMP connects to QEMU's QMP socket, reads the greeting and leaves
// capabilities negotiation mode. alive reports whether QEMU still runs, so a QEMU
// that died before creating its socket fails fast instead of at the deadline.
func dialQMP(ctx context.Context, path string, alive func() error) (*qmpClient, error) {
	var d net.Dialer
	var conn net.Conn
	for {
		var err error
		conn, err = d.DialContext(ctx, "unix", path)
		if err == nil {
			break
		}
		if aerr := alive(); aerr != nil {
			return nil, fmt.Errorf("connect qmp %s: %w", path, aerr)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect qmp %s: %w (last error: %v)", path, ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	c := &qmpClient{
		conn:    conn,
		rd:      bufio.NewReaderSize(conn, 64<<10),
		pending: make(map[uint64]chan qmpResult),
		done:    make(chan struct{}),
	}
	if err := c.greet(ctx); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("connect qmp %s: %w", path, err)
	}
	go c.readLoop()
	if _, err := c.Run(ctx, "qmp_capabilities", nil); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("connect qmp %s: %w", path, err)
	}
	return c, nil
}

func (c *qmpClient) greet(ctx context.Context) error {
	if dl, ok := ctx.Deadline(); ok {
		_ = c.conn.SetReadDeadline(dl)
		defer func() { _ = c.conn.SetReadDeadline(time.Time{}) }()
	}
	line, err := readQMPLine(c.rd)
	if err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	_, kind, _, err := decodeQMP(line)
	if err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	if kind != qmpGreeting {
		return fmt.Errorf("read greeting: first message is not a QMP greeting: %.200s", line)
	}
	return nil
}

func (c *qmpClient) readLoop() {
	defer close(c.done)
	var err error
	for {
		var line []byte
		line, err = readQMPLine(c.rd)
		if err != nil {
			break
		}
		m, kind, id, derr := decodeQMP(line)
		if derr != nil {
			err = derr
			break
		}
		if kind != qmpReply {
			continue
		}
		c.mu.Lock()
		ch := c.pending[id]
		delete(c.pending, id)
		c.mu.Unlock()
		if ch == nil {
			continue // the command gave up waiting
		}
		if m.Error != nil {
			ch <- qmpResult{err: m.Error}
		} else {
			ch <- qmpResult{ret: m.Return}
		}
	}
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		err = ErrQMPClosed
	}
	c.mu.Lock()
	c.readErr = err
	for id, ch := range c.pending {
		ch <- qmpResult{err: err}
		delete(c.pending, id)
	}
	c.mu.Unlock()
}

// Run sends one command and waits for its reply. args is marshalled as the
// command's "arguments" (nil sends none). A QEMU error reply is a *QMPError.
func (c *qmpClient) Run(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	req := struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
		ID        uint64 `json:"id"`
	}{Execute: cmd, Arguments: args}

	ch := make(chan qmpResult, 1)
	c.mu.Lock()
	if c.readErr != nil {
		err := c.readErr
		c.mu.Unlock()
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	c.nextID++
	req.ID = c.nextID
	c.pending[req.ID] = ch
	c.mu.Unlock()

	forget := func() {
		c.mu.Lock()
		delete(c.pending, req.ID)
		c.mu.Unlock()
	}
	b, err := json.Marshal(req)
	if err != nil {
		forget()
		return nil, fmt.Errorf("qmp %s: encode arguments: %w", cmd, err)
	}
	if err := c.write(ctx, append(b, '\n')); err != nil {
		forget()
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	select {
	case r := <-ch:
		var qe *QMPError
		if errors.As(r.err, &qe) {
			e := *qe
			e.Command = cmd
			return nil, &e
		}
		if r.err != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, r.err)
		}
		return r.ret, nil
	case <-ctx.Done():
		forget()
		return nil, fmt.Errorf("qmp %s: %w", cmd, ctx.Err())
	}
}

func (c *qmpClient) write(ctx context.Context, b []byte) error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(30 * time.Second)
	}
	_ = c.conn.SetWriteDeadline(dl)
	_, err := c.conn.Write(b)
	return err
}

// Close ends the connection and waits for the reader goroutine.
func (c *qmpClient) Close() error {
	err := c.conn.Close()
	<-c.done
	return err
}
