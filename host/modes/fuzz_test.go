package modes

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"
)

func FuzzParseProbe(f *testing.F) {
	f.Add(appendPing(nil, msgPing, 7))
	f.Add(appendPing(nil, msgPong, 7))
	f.Add(appendBurstStart(nil, 1, 16, 32<<10))
	f.Add(burstData(1, 3, 64))
	f.Add(appendBurstEnd(nil, 1, 16))
	f.Add(appendReport(nil, 2, []sample{{0, 100}, {50, 100}, {90, 100}}))
	f.Add(appendHeader(nil, msgDone))
	f.Add(appendError(nil, "bad"))
	f.Add([]byte{msgReport, 1, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, msg []byte) {
		m, err := parseProbe(msg, nil)
		if err != nil {
			if !errors.Is(err, ErrProbeProtocol) {
				t.Fatalf("error %v does not wrap ErrProbeProtocol", err)
			}
			return
		}
		// What parses re-encodes to the same bytes.
		var re []byte
		switch m.typ {
		case msgPing, msgPong:
			re = appendPing(nil, m.typ, m.seq)
		case msgBurstStart:
			re = appendBurstStart(nil, m.round, m.count, m.size)
		case msgBurstData:
			re = append([]byte(nil), msg...)
			fillBurstData(re, m.round, m.index)
		case msgBurstEnd:
			re = appendBurstEnd(nil, m.round, m.sent)
		case msgReport:
			re = appendReport(nil, m.round, m.samples)
		case msgDone:
			re = appendHeader(nil, msgDone)
		case msgError:
			re = appendError(nil, m.text)
		}
		if !bytes.Equal(re, msg) {
			t.Fatalf("%s: re-encoded %x, parsed %x", probeName(m.typ), re, msg)
		}
	})
}

// scriptConn plays a fixed list of incoming messages and records what is
// sent back.
type scriptConn struct {
	in   [][]byte
	sent [][]byte
}

func (s *scriptConn) Send(_ context.Context, msg []byte) error {
	s.sent = append(s.sent, append([]byte(nil), msg...))
	return nil
}

func (s *scriptConn) Recv(context.Context) ([]byte, error) {
	if len(s.in) == 0 {
		return nil, errors.New("script ended")
	}
	m := s.in[0]
	s.in = s.in[1:]
	return m, nil
}

// FuzzRespond feeds a responder arbitrary message sequences: it must end
// with a clean result or error, and everything it sends must be a valid
// probe message.
func FuzzRespond(f *testing.F) {
	join := func(ms ...[]byte) []byte {
		var b []byte
		for _, m := range ms {
			b = append(b, byte(len(m)>>8), byte(len(m)))
			b = append(b, m...)
		}
		return b
	}
	f.Add(join(appendPing(nil, msgPing, 0), appendBurstStart(nil, 0, 2, 16), burstData(0, 0, 16), burstData(0, 1, 16), appendBurstEnd(nil, 0, 2), appendHeader(nil, msgDone)))
	f.Add(join(appendBurstStart(nil, 0, 1, 10), burstData(0, 0, 10), appendBurstEnd(nil, 0, 1), []byte{1}))
	f.Add(join(appendError(nil, "x")))
	f.Fuzz(func(t *testing.T, script []byte) {
		sc := &scriptConn{}
		for len(script) >= 2 {
			n := int(script[0])<<8 | int(script[1])
			script = script[2:]
			if n > len(script) {
				n = len(script)
			}
			sc.in = append(sc.in, script[:n])
			script = script[n:]
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, _ = Respond(ctx, sc)
		for _, m := range sc.sent {
			if _, err := parseProbe(m, nil); err != nil {
				t.Fatalf("responder sent an invalid message %x: %v", m, err)
			}
		}
	})
}

func FuzzParseCache(f *testing.F) {
	f.Add([]byte(`{"version":1,"peers":{"dst":{"rtt":1000000,"bandwidth":1.25e8,"loss":0,"when":"2026-11-25T20:00:00Z","source":"probe"}}}`))
	f.Add([]byte(`{"version":1,"peers":{}}`))
	f.Add([]byte(`{"version":1,"peers":{"x":{"bandwidth":-1}}}`))
	f.Add([]byte(`{"version":2}`))
	f.Add([]byte(`nonsense`))
	f.Fuzz(func(t *testing.T, data []byte) {
		peers, err := parseCache(data)
		if err != nil {
			if !errors.Is(err, ErrBadConfig) {
				t.Fatalf("error %v does not wrap ErrBadConfig", err)
			}
			return
		}
		for name, p := range peers {
			if CheckPeerName(name) != nil || p.Validate() != nil {
				t.Fatalf("accepted %q %+v", name, p)
			}
		}
	})
}

func FuzzParseOverrides(f *testing.F) {
	f.Add([]byte(`{"version":1,"mode":"hybrid","peers":{"a":"internet","b":"dc"}}`))
	f.Add([]byte(`{"version":1,"thresholds":{"datacenter_max_rtt":"1ms","internet_max_bandwidth":"500mbit","internet_min_loss":"1%","margin":0.2,"hold":"5s"}}`))
	f.Add([]byte(`{"version":1,"thresholds":{"datacenter_min_bandwidth":"100mbit"}}`))
	f.Add([]byte(`{"version":1,"peers":{"":"hybrid"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		o, err := ParseOverrides(data)
		if err != nil {
			if !errors.Is(err, ErrBadConfig) {
				t.Fatalf("error %v does not wrap ErrBadConfig", err)
			}
			return
		}
		if err := o.Thresholds.WithDefaults().Validate(); err != nil {
			t.Fatalf("accepted invalid thresholds: %v", err)
		}
		for name, m := range o.Peers {
			if CheckPeerName(name) != nil || !m.Valid() {
				t.Fatalf("accepted peer %q mode %v", name, m)
			}
		}
		if o.Mode != 0 && !o.Mode.Valid() {
			t.Fatalf("accepted mode %v", o.Mode)
		}
	})
}

func FuzzParseBitRate(f *testing.F) {
	for _, s := range []string{"300mbit", "2.5Gbit/s", "800k", "1e9", "0", "-1g", "NaN", "inf"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseBitRate(s)
		if err != nil {
			if !errors.Is(err, ErrBadConfig) {
				t.Fatalf("error %v does not wrap ErrBadConfig", err)
			}
			return
		}
		if !(v > 0 && v <= maxBandwidth) {
			t.Fatalf("ParseBitRate(%q) = %v", s, v)
		}
	})
}
