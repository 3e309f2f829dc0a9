//go:build linux

package wanlab

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// tunDev is the name of each host's lab interface inside its namespace.
const tunDev = "wan0"

// tunTxQueueLen replaces the TUN default of 500 packets: a sender in the
// namespace bursts a whole congestion window into the device at once, and
// drops there would be losses the profile did not ask for.
const tunTxQueueLen = 10000

// tcpMemMax lets TCP autotuning in a lab namespace grow windows to the
// bandwidth-delay product of the fastest profile plus its queue.
const tcpMemMax = 128 << 20

// setupHost runs inside a fresh namespace: loopback up, TCP buffer limits,
// IPv6 off (the lab routes IPv4 only), then the TUN device with its address.
// It returns the TUN fd, non-blocking: the forwarder threads wait in poll so
// that they can also watch the lab's stop signal.
func setupHost(addr netip.Prefix, mtu int) (int, error) {
	sysctls := []struct{ path, value string }{
		{"/proc/sys/net/ipv4/tcp_rmem", fmt.Sprintf("4096 131072 %d", tcpMemMax)},
		{"/proc/sys/net/ipv4/tcp_wmem", fmt.Sprintf("4096 16384 %d", tcpMemMax)},
		{"/proc/sys/net/ipv6/conf/all/disable_ipv6", "1"},
		{"/proc/sys/net/ipv6/conf/default/disable_ipv6", "1"},
	}
	for _, s := range sysctls {
		err := os.WriteFile(s.path, []byte(s.value), 0)
		if err != nil && !(strings.Contains(s.path, "ipv6") && errors.Is(err, os.ErrNotExist)) {
			return -1, fmt.Errorf("set %s: %w", s.path, err)
		}
	}
	if err := ifaceUp("lo"); err != nil {
		return -1, err
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return -1, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(tunDev)
	if err == nil {
		ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
		err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
		if err != nil {
			err = fmt.Errorf("create tun %s: %w", tunDev, err)
		}
	}
	if err == nil {
		err = configureIface(tunDev, addr, mtu)
	}
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// ioctlSock opens the socket that interface ioctls go through.
func ioctlSock() (int, error) {
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("ioctl socket: %w", err)
	}
	return s, nil
}

func ifaceUp(name string) error {
	s, err := ioctlSock()
	if err != nil {
		return err
	}
	defer unix.Close(s)
	return setUp(s, name)
}

func setUp(s int, name string) error {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return fmt.Errorf("iface %s: %w", name, err)
	}
	if err := unix.IoctlIfreq(s, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("get flags of %s: %w", name, err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(s, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring %s up: %w", name, err)
	}
	return nil
}

// configureIface sets MTU, queue length and address with prefix, then
// brings the interface up, which makes the kernel add the prefix route.
func configureIface(name string, addr netip.Prefix, mtu int) error {
	s, err := ioctlSock()
	if err != nil {
		return err
	}
	defer unix.Close(s)
	set := func(req uint, what string, fill func(*unix.Ifreq) error) error {
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return fmt.Errorf("iface %s: %w", name, err)
		}
		if err := fill(ifr); err != nil {
			return fmt.Errorf("set %s of %s: %w", what, name, err)
		}
		if err := unix.IoctlIfreq(s, req, ifr); err != nil {
			return fmt.Errorf("set %s of %s: %w", what, name, err)
		}
		return nil
	}
	ip := addr.Addr().As4()
	mask := prefixMask(addr.Bits())
	steps := []struct {
		req  uint
		what string
		fill func(*unix.Ifreq) error
	}{
		{unix.SIOCSIFMTU, "mtu", func(r *unix.Ifreq) error { r.SetUint32(uint32(mtu)); return nil }},
		{unix.SIOCSIFTXQLEN, "txqueuelen", func(r *unix.Ifreq) error { r.SetUint32(tunTxQueueLen); return nil }},
		// The address must come before the mask: setting it resets the
		// mask to the address's class default.
		{unix.SIOCSIFADDR, "address", func(r *unix.Ifreq) error { return r.SetInet4Addr(ip[:]) }},
		{unix.SIOCSIFNETMASK, "netmask", func(r *unix.Ifreq) error { return r.SetInet4Addr(mask[:]) }},
	}
	for _, st := range steps {
		if err := set(st.req, st.what, st.fill); err != nil {
			return err
		}
	}
	return setUp(s, name)
}

func prefixMask(bits int) [4]byte {
	m := ^uint32(0) << (32 - bits)
	if bits == 0 {
		m = 0
	}
	return [4]byte{byte(m >> 24), byte(m >> 16), byte(m >> 8), byte(m)}
}

// readDevStats parses /proc/net/dev of the calling thread's namespace for
// one interface.
func readDevStats(name string) (devStats, error) {
	// /proc/net is /proc/self/net, the namespace of the main thread; the
	// thread's own view is under thread-self.
	data, err := os.ReadFile("/proc/thread-self/net/dev")
	if err != nil {
		return devStats{}, fmt.Errorf("read /proc/net/dev: %w", err)
	}
	return parseDevStats(data, name)
}
