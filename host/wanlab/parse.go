package wanlab

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
)

// addrPlan maps lab addresses to hosts: host i has base+i+1, the network
// address itself and everything past the last host belong to nobody.
type addrPlan struct {
	base  uint32 // network address of the lab's prefix
	mask  uint32
	hosts int
}

// route returns the index of the host an IPv4 packet is addressed to, or -1
// for anything else: IPv6, a truncated or malformed header, or a
// destination outside the lab's hosts. It reads only the header fields it
// needs and never panics, whatever the bytes.
func (a addrPlan) route(pkt []byte) int {
	if len(pkt) < 20 || pkt[0]>>4 != 4 || pkt[0]&0x0f < 5 {
		return -1
	}
	dst := binary.BigEndian.Uint32(pkt[16:20])
	if dst&a.mask != a.base {
		return -1
	}
	i := int(dst-a.base) - 1
	if i < 0 || i >= a.hosts {
		return -1
	}
	return i
}

// devStats are the kernel's counters of an interface, read from inside its
// namespace.
type devStats struct {
	RxPackets, RxDropped, TxPackets, TxDropped uint64
}

// parseDevStats finds one interface in the text of /proc/net/dev.
func parseDevStats(data []byte, name string) (devStats, error) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		iface, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(iface) != name {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 16 {
			return devStats{}, fmt.Errorf("parse /proc/net/dev line for %s: %d fields, want 16: %w", name, len(f), ErrBadValue)
		}
		var v [16]uint64
		for i := range v {
			n, err := strconv.ParseUint(f[i], 10, 64)
			if err != nil {
				return devStats{}, fmt.Errorf("parse /proc/net/dev field %d of %s: %w", i, name, ErrBadValue)
			}
			v[i] = n
		}
		return devStats{RxPackets: v[1], RxDropped: v[3], TxPackets: v[9], TxDropped: v[11]}, nil
	}
	return devStats{}, fmt.Errorf("parse /proc/net/dev: no interface %s: %w", name, ErrBadValue)
}

// Probes are the datagrams of the RTT and loss measurements: a magic, a
// sequence number and the sender's lab clock, padded to probeSize.
const (
	probeSize  = 64
	probeMagic = 0x44574c50 // "DWLP"
)

// encodeProbe writes a probe into b, which must hold probeSize bytes.
func encodeProbe(b []byte, seq uint32, sent int64) {
	clear(b[:probeSize])
	binary.BigEndian.PutUint32(b[0:4], probeMagic)
	binary.BigEndian.PutUint32(b[4:8], seq)
	binary.BigEndian.PutUint64(b[8:16], uint64(sent))
}

// decodeProbe reads a probe received from the network; anything that is
// not a well-formed probe gives ok false.
func decodeProbe(b []byte) (seq uint32, sent int64, ok bool) {
	if len(b) != probeSize || binary.BigEndian.Uint32(b[0:4]) != probeMagic {
		return 0, 0, false
	}
	sent = int64(binary.BigEndian.Uint64(b[8:16]))
	if sent < 0 {
		return 0, 0, false
	}
	return binary.BigEndian.Uint32(b[4:8]), sent, true
}

// parseSockstatTCPMem reads the pages of memory TCP uses, machine-wide,
// from the text of /proc/net/sockstat ("TCP: inuse 3 ... mem 120").
func parseSockstatTCPMem(data []byte) (int64, error) {
	for line := range strings.Lines(string(data)) {
		rest, ok := strings.CutPrefix(line, "TCP:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		for i := 0; i+1 < len(f); i += 2 {
			if f[i] == "mem" {
				v, err := strconv.ParseInt(f[i+1], 10, 64)
				if err != nil || v < 0 {
					return 0, fmt.Errorf("parse sockstat tcp mem %q: %w", f[i+1], ErrBadValue)
				}
				return v, nil
			}
		}
	}
	return 0, fmt.Errorf("parse sockstat: no TCP mem: %w", ErrBadValue)
}

// parseTCPMem reads the low, pressure and high marks of
// /proc/sys/net/ipv4/tcp_mem, in pages.
func parseTCPMem(data []byte) ([3]int64, error) {
	var marks [3]int64
	f := strings.Fields(string(data))
	if len(f) != 3 {
		return marks, fmt.Errorf("parse tcp_mem %q: want 3 fields: %w", data, ErrBadValue)
	}
	for i, s := range f {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v < 0 {
			return marks, fmt.Errorf("parse tcp_mem field %q: %w", s, ErrBadValue)
		}
		marks[i] = v
	}
	return marks, nil
}
