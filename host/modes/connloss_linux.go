package modes

import (
	"fmt"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// infiniteSSThresh is Linux's TCP_INFINITE_SSTHRESH: the slow-start
// threshold of a connection that has never lost a packet.
const infiniteSSThresh = 0x7fffffff

// tcpInfo reads TCP_INFO.
func tcpInfo(sc syscall.Conn) (*unix.TCPInfo, error) {
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("tcp info: %w", err)
	}
	var info *unix.TCPInfo
	var serr error
	if err := rc.Control(func(fd uintptr) {
		info, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil {
		return nil, fmt.Errorf("tcp info: %w", err)
	}
	if serr != nil {
		return nil, fmt.Errorf("tcp info: %w: %w", serr, ErrNoTCPInfo)
	}
	return info, nil
}

// sendState reads TCP_INFO's bytes acknowledged and chrono statistics
// (Linux 4.10 and later; an older kernel reports zeros, which read as never
// busy).
func sendState(sc syscall.Conn) (SendState, error) {
	info, err := tcpInfo(sc)
	if err != nil {
		return SendState{}, err
	}
	return SendState{Acked: info.Bytes_acked, Busy: time.Duration(info.Busy_time) * time.Microsecond,
		ReceiverLimited:   time.Duration(info.Rwnd_limited) * time.Microsecond,
		SendBufferLimited: time.Duration(info.Sndbuf_limited) * time.Microsecond}, nil
}

// tcpCounters reads TCP_INFO: data segments out, total retransmits, and
// whether the connection is still in its initial slow start.
func tcpCounters(sc syscall.Conn) (TCPCounters, bool, error) {
	info, err := tcpInfo(sc)
	if err != nil {
		return TCPCounters{}, false, err
	}
	return TCPCounters{SegmentsSent: uint64(info.Data_segs_out), Retransmitted: uint64(info.Total_retrans),
		SRTT: time.Duration(info.Rtt) * time.Microsecond, MinRTT: time.Duration(info.Min_rtt) * time.Microsecond}, info.Snd_ssthresh >= infiniteSSThresh, nil
}
