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

// tcpCounters reads TCP_INFO: data segments out, total retransmits, and
// whether the connection is still in its initial slow start.
func tcpCounters(sc syscall.Conn) (TCPCounters, bool, error) {
	rc, err := sc.SyscallConn()
	if err != nil {
		return TCPCounters{}, false, fmt.Errorf("tcp info: %w", err)
	}
	var info *unix.TCPInfo
	var serr error
	if err := rc.Control(func(fd uintptr) {
		info, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil {
		return TCPCounters{}, false, fmt.Errorf("tcp info: %w", err)
	}
	if serr != nil {
		return TCPCounters{}, false, fmt.Errorf("tcp info: %w: %w", serr, ErrNoTCPInfo)
	}
	return TCPCounters{SegmentsSent: uint64(info.Data_segs_out), Retransmitted: uint64(info.Total_retrans),
		SRTT: time.Duration(info.Rtt) * time.Microsecond, MinRTT: time.Duration(info.Min_rtt) * time.Microsecond}, info.Snd_ssthresh >= infiniteSSThresh, nil
}
