package pagestore

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
)

// SessionID names a recorded session. Both hosts record a session under
// the id the source put in its hello.
type SessionID string

// maxIDLen bounds an id; ids travel in hellos and name nothing on disk.
const maxIDLen = 64

// NewSessionID returns a random id (128 bits): unique without any
// coordination between hosts, unlike a hypervisor plugin's migration id.
func NewSessionID() SessionID {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return SessionID("h" + hex.EncodeToString(b[:]))
}

// ParseSessionID checks an id received from a peer: 1..64 bytes of
// [A-Za-z0-9._-].
func ParseSessionID(s string) (SessionID, error) {
	if len(s) == 0 || len(s) > maxIDLen {
		return "", fmt.Errorf("pagestore: session id of %d bytes, want 1..%d: %w", len(s), maxIDLen, ErrInvalid)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return "", fmt.Errorf("pagestore: session id %q: byte %#x at %d not in [A-Za-z0-9._-]: %w", s, c, i, ErrInvalid)
		}
	}
	return SessionID(s), nil
}
