package pipeline

import (
	"encoding/binary"
	"fmt"

	"github.com/dwcp/dwcp/host/internal/pb/streamv1"
	"github.com/dwcp/dwcp/host/pagestage"
	"github.com/dwcp/dwcp/host/pagestore"
)

// History lets a session use and extend the host's page history
// (host/pagestore, docs/pagestore.md): both hosts record the pages of the
// session under one id, and a later session between them sends a page
// either already holds as a reference. It applies to QEMU streams through
// the page stage only.
type History struct {
	Store *pagestore.Store
	// Peer is the other host as the transport authenticated it: sessions
	// are recorded, offered and used per peer, so one peer's sessions
	// never serve another's.
	Peer string
}

// HistorySummary says what a session did with the page history.
type HistorySummary struct {
	// Session is the id both hosts record the session under ("" if
	// history was not in play).
	Session string `json:"session,omitempty"`
	// Recording: this host records the session; it is committed in the
	// background once the stream was verified end to end.
	Recording bool `json:"recording"`
	// Sessions is how many earlier sessions page references could name,
	// and KnownPages how many distinct pages they hold.
	Sessions   int `json:"sessions_used"`
	KnownPages int `json:"known_pages"`
	// Problems says what did not work (a peer without history, a session
	// found corrupt and dropped, ...); the session went on without.
	Problems []string `json:"problems,omitempty"`
}

func (s *HistorySummary) problem(format string, args ...any) {
	s.Problems = append(s.Problems, fmt.Sprintf(format, args...))
}

// PageHooks connect a session's page stage to the page history.
type PageHooks struct {
	// Known (source): pages the destination holds.
	Known pagestage.KnownSource
	// Store (destination): resolves references to such pages.
	Store pagestage.KnownStore
	// Observer (both): records the pages the session carries.
	Observer pagestage.PageObserver
}

// maxOffered bounds the held sessions a source considers.
const maxOffered = 1024

// offer puts the history fields into the source's hello: the id the
// session is recorded under and how many pages this host can record.
func (h *History) offer(hello *streamv1.Hello) pagestore.SessionID {
	id := pagestore.NewSessionID()
	hello.HistorySession = string(id)
	hello.History = true
	hello.HistoryMaxPages = h.Store.Capacity()
	return id
}

// sourceHistory is the source's history state for one session.
type sourceHistory struct {
	rec *pagestore.Recorder
	sum HistorySummary
}

// start reads the destination's accept: it records only if the
// destination does too (otherwise the session could never be used), with
// the page cap both agreed on, and builds the set of pages both hold from
// the sessions the destination offered that this host holds identically.
func (h *History) start(id pagestore.SessionID, hello *streamv1.Hello, acc *streamv1.Accept, expectPages int) (PageHooks, *sourceHistory) {
	sh := &sourceHistory{sum: HistorySummary{Session: string(id)}}
	var hooks PageHooks
	switch {
	case !acc.History:
		sh.sum.problem("the destination records nothing")
	case hello.HistoryMaxPages == 0 || acc.HistoryMaxPages == 0:
		sh.sum.problem("no room in the page history for this session")
	default:
		rec, err := h.Store.Record(h.Peer, id, pagestore.RecordOptions{ExpectPages: expectPages,
			MaxPages: min(hello.HistoryMaxPages, acc.HistoryMaxPages)})
		if err != nil {
			sh.sum.problem("not recording: %v", err)
		} else {
			sh.rec, sh.sum.Recording = rec, true
			hooks.Observer = rec
		}
	}
	var offered []pagestore.Info
	// A destination offers a handful of sessions (those that fit its
	// bound twice over); a list longer than maxOffered is not honest.
	for _, s := range acc.HeldSessions[:min(len(acc.HeldSessions), maxOffered)] {
		id, err := pagestore.ParseSessionID(s.GetId())
		if err != nil || len(s.GetIndexDigest()) != 16 {
			continue
		}
		d := s.GetIndexDigest()
		offered = append(offered, pagestore.Info{ID: id, Pages: s.GetPages(), Digest: pagestage.PageHash{
			Hi: binary.BigEndian.Uint64(d), Lo: binary.BigEndian.Uint64(d[8:]),
		}})
	}
	if len(offered) == 0 {
		return hooks, sh
	}
	set := h.Store.KnownSet(h.Peer, offered)
	for _, p := range set.Problems() {
		sh.sum.problem("%v", p)
	}
	if set.Len() > 0 {
		hooks.Known = set
		sh.sum.Sessions, sh.sum.KnownPages = len(set.Sessions()), set.Len()
	}
	return hooks, sh
}

// finish commits (ok) or drops the recording; the disk work runs in the
// background.
func (sh *sourceHistory) finish(ok bool) {
	if sh != nil && sh.rec != nil {
		sh.rec.Finish(ok)
		sh.rec = nil
	}
}

// destHistory is the destination's history state for one session.
type destHistory struct {
	rec      *pagestore.Recorder
	maxPages uint64
	reader   *pagestore.Reader
	held     []*streamv1.HeldSession
	sum      HistorySummary
}

// receive sets up the destination's side from the hello: record the
// session under the source's id, and when the source can use history,
// offer the sessions held with it (pinned until close).
func (h *History) receive(hello *streamv1.Hello) (PageHooks, *destHistory) {
	dh := &destHistory{}
	var hooks PageHooks
	if hello.GetHistorySession() == "" || !hello.GetPageStage().GetEnabled() || hello.Kind != streamv1.StreamKind_STREAM_KIND_QEMU {
		return hooks, dh
	}
	dh.sum.Session = hello.HistorySession
	id, err := pagestore.ParseSessionID(hello.HistorySession)
	if err != nil {
		dh.sum.problem("not recording: %v", err)
		return hooks, dh
	}
	// The sessions offered are pinned first: what is left is what this
	// session may record.
	if hello.History {
		r := h.Store.OpenReader(h.Peer)
		for _, p := range r.Problems() {
			dh.sum.problem("%v", p)
		}
		if len(r.Sessions()) == 0 {
			r.Close()
		} else {
			dh.reader, hooks.Store = r, r
			for _, s := range r.Sessions() {
				d := binary.BigEndian.AppendUint64(make([]byte, 0, 16), s.Digest.Hi)
				d = binary.BigEndian.AppendUint64(d, s.Digest.Lo)
				dh.held = append(dh.held, &streamv1.HeldSession{Id: string(s.ID), Pages: s.Pages, IndexDigest: d})
			}
			dh.sum.Sessions, dh.sum.KnownPages = len(r.Sessions()), r.Pages()
		}
	}
	dh.maxPages = min(hello.HistoryMaxPages, h.Store.Capacity())
	if dh.maxPages == 0 {
		dh.sum.problem("no room in the page history for this session")
		return hooks, dh
	}
	expect := int(min(hello.ExpectedLength/pagestage.PageSize, 1<<30))
	if rec, err := h.Store.Record(h.Peer, id, pagestore.RecordOptions{ExpectPages: expect, MaxPages: dh.maxPages}); err != nil {
		dh.sum.problem("not recording: %v", err)
	} else {
		dh.rec, dh.sum.Recording = rec, true
		hooks.Observer = rec
	}
	return hooks, dh
}

// accept fills the destination's history fields of the accept.
func (dh *destHistory) accept(acc *streamv1.Accept) {
	acc.History = dh.rec != nil
	if acc.History {
		acc.HistoryMaxPages = dh.maxPages
	}
	acc.HeldSessions = dh.held
}

// close ends the destination's history use: the recording is committed
// only with ok (the final checkpoint verified), and the reader's sessions
// are unpinned.
func (dh *destHistory) close(ok bool) {
	if dh.rec != nil {
		dh.rec.Finish(ok)
		dh.rec = nil
	}
	if dh.reader != nil {
		dh.reader.Close()
		dh.reader = nil
	}
}
