package modes

import "github.com/dwcp/dwcp/host/transport"

// TransportSampler is a LinkSampler over a transport session: its smoothed
// RTT and delivery rate, and the TCP counters of Loss (a ConnLoss whose
// WrapDial opened the session's connections) when set.
type TransportSampler struct {
	Session interface{ Stats() transport.Stats }
	Loss    LossSource
}

// Sample implements LinkSampler.
func (s TransportSampler) Sample() LinkSample {
	var ls LinkSample
	if s.Session != nil {
		st := s.Session.Stats()
		ls.RTT, ls.DeliveryRate = st.RTT, st.DeliveryRate
	}
	if s.Loss != nil {
		if c, err := s.Loss.TCPCounters(); err == nil {
			ls.Counters, ls.CountersOK = c, true
		}
		if src, ok := s.Loss.(SendStateSource); ok {
			if st, err := src.SendStates(); err == nil {
				ls.Send = st
			}
		}
	}
	return ls
}
