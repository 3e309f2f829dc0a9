package shm

import (
	"errors"
	"fmt"
	"math"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// Pair returns a connected SOCK_SEQPACKET unix socketpair, both ends
// close-on-exec: the host keeps host and passes plugin to the plugin process
// (exec.Cmd.ExtraFiles clears close-on-exec for the child's copy only).
// SEQPACKET keeps message boundaries, so every read is exactly one message,
// and it needs no filesystem path or listener another process could reach.
func Pair() (host, plugin *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("shm pair: socketpair: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "dwcp-shm-host"), os.NewFile(uintptr(fds[1]), "dwcp-shm-plugin"), nil
}

// seqpacketConn turns f into a pollable connection (so reads honour
// deadlines and Close wakes blocked readers) and takes ownership of f: f is
// closed whatever happens, the returned conn holds its own descriptor.
func seqpacketConn(f *os.File) (*net.UnixConn, error) {
	if f == nil {
		return nil, errors.New("socket: nil file")
	}
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("socket %s: %w", f.Name(), err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("socket %s: not a unix socket", f.Name())
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		uc.Close()
		return nil, fmt.Errorf("socket %s: %w", f.Name(), err)
	}
	typ, serr := 0, error(nil)
	if err := rc.Control(func(fd uintptr) {
		typ, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE)
	}); err != nil || serr != nil {
		uc.Close()
		return nil, fmt.Errorf("socket %s: type: %w", f.Name(), errors.Join(err, serr))
	}
	if typ != unix.SOCK_SEQPACKET {
		uc.Close()
		return nil, fmt.Errorf("socket %s: type %d, want SOCK_SEQPACKET", f.Name(), typ)
	}
	return uc, nil
}

// arenaSeals stop either process from resizing the memfd. A shrink would
// make the other side's next access to the mapping raise SIGBUS, i.e. one
// process could crash the other; with the seals in place neither can.
const arenaSeals = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL

// createArena makes the host's sealed memfd of g.size() bytes and maps it.
// The caller sends fd to the plugin and then closes it; the mapping stays.
func createArena(g geometry) (fd int, mem []byte, err error) {
	size := g.size()
	if size > math.MaxInt {
		return -1, nil, fmt.Errorf("create arena: %d bytes do not fit this address space", size)
	}
	fd, err = unix.MemfdCreate("dwcp-shm", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING|unix.MFD_NOEXEC_SEAL)
	if errors.Is(err, unix.EINVAL) {
		// Kernels before 6.3 do not know MFD_NOEXEC_SEAL.
		fd, err = unix.MemfdCreate("dwcp-shm", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	}
	if err != nil {
		return -1, nil, fmt.Errorf("create arena: memfd_create: %w", err)
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		unix.Close(fd)
		return -1, nil, fmt.Errorf("create arena: ftruncate %d: %w", size, err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, arenaSeals); err != nil {
		unix.Close(fd)
		return -1, nil, fmt.Errorf("create arena: seal: %w", err)
	}
	mem, err = unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return -1, nil, fmt.Errorf("create arena: mmap %d bytes: %w", size, err)
	}
	return fd, mem, nil
}

// mapArena is the plugin's side: it maps the host's memfd only if it is
// exactly the size the hello announced and sealed against shrinking, so
// that no access inside the mapping can fault.
func mapArena(fd int, g geometry) ([]byte, error) {
	size := g.size()
	if size > math.MaxInt {
		return nil, fmt.Errorf("map arena: %d bytes do not fit this address space", size)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("map arena: fstat: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size < 0 || uint64(st.Size) != size {
		return nil, fmt.Errorf("map arena: descriptor is %d bytes (mode %#o), hello announced %d", st.Size, st.Mode&unix.S_IFMT, size)
	}
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		return nil, fmt.Errorf("map arena: not a sealable memfd: %w", err)
	}
	if seals&unix.F_SEAL_SHRINK == 0 {
		return nil, fmt.Errorf("map arena: memfd not sealed against shrinking (seals %#x)", seals)
	}
	mem, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map arena: mmap %d bytes: %w", size, err)
	}
	return mem, nil
}

// receivedFDs extracts every SCM_RIGHTS descriptor from oob, so that the
// caller can close the ones it does not keep: a peer that sends extra
// descriptors must not make us leak them.
func receivedFDs(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("control message: %w", err)
	}
	var fds []int
	for i := range msgs {
		if msgs[i].Header.Level != unix.SOL_SOCKET || msgs[i].Header.Type != unix.SCM_RIGHTS {
			continue
		}
		got, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			closeFDs(fds)
			return nil, fmt.Errorf("control message: %w", err)
		}
		fds = append(fds, got...)
	}
	return fds, nil
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
