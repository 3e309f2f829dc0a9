package testguest

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"
)

// QEMU migration stream constants (migration/savevm.c).
const (
	streamMagic         = 0x5145564d // "QEVM"
	streamVersion       = 3
	secConfiguration    = 0x07
	secEOF              = 0x00
	secVMDescription    = 0x06
	maxMachineNameLen   = 256
	maxVMDescriptionLen = 1 << 20
)

// StreamInfo is what InspectStream learns from a stream's two ends. It checks
// framing only; the RAM and device sections in between are not parsed here.
type StreamInfo struct {
	Size    int64
	Version uint32
	// Machine is the machine type from the configuration section (e.g.
	// "pc-q35-7.2"), "" when the stream has none.
	Machine string
	// VMDescOffset is the offset of the VMDESCRIPTION byte that follows the EOF
	// byte; VMDescLen is the length of its JSON.
	VMDescOffset int64
	VMDescLen    int
	PageSize     int      // "page_size" of the description
	Devices      []string // device section names listed in the description
}

// parseStreamHeader reads the magic, the version and, when present, the
// configuration section's machine type from the first bytes of a stream.
func parseStreamHeader(b []byte) (version uint32, machine string, err error) {
	if len(b) < 8 {
		return 0, "", fmt.Errorf("stream header: %d bytes, need 8", len(b))
	}
	if m := binary.BigEndian.Uint32(b); m != streamMagic {
		return 0, "", fmt.Errorf("stream header: magic %#08x, want %#08x (QEVM)", m, streamMagic)
	}
	version = binary.BigEndian.Uint32(b[4:])
	if version != streamVersion {
		return version, "", fmt.Errorf("stream header: version %d, want %d", version, streamVersion)
	}
	if len(b) == 8 || b[8] != secConfiguration {
		return version, "", nil
	}
	if len(b) < 13 {
		return version, "", errors.New("stream header: configuration section cut short")
	}
	n := binary.BigEndian.Uint32(b[9:])
	if n == 0 || n > maxMachineNameLen {
		return version, "", fmt.Errorf("stream header: machine name length %d out of range", n)
	}
	if uint64(len(b)) < 13+uint64(n) {
		return version, "", errors.New("stream header: machine name cut short")
	}
	name := b[13 : 13+n]
	if !utf8.Valid(name) || bytes.ContainsAny(name, "\x00\n") {
		return version, "", errors.New("stream header: machine name is not text")
	}
	return version, string(name), nil
}

// findVMDescription locates the VMDESCRIPTION record at the end of tail, which
// must be the last bytes of a stream: EOF (0x00), 0x06, be32 length, JSON running
// to the end. JSON text holds no 0x00 byte, so the match nearest the end is the
// record itself and not page data that happens to look like it.
func findVMDescription(tail []byte) (off int, jsonLen int, err error) {
	for p := len(tail) - 5; p >= 1; p-- {
		if tail[p] != secVMDescription || tail[p-1] != secEOF {
			continue
		}
		n := binary.BigEndian.Uint32(tail[p+1:])
		if n == 0 || uint64(n) != uint64(len(tail)-p-5) {
			return 0, 0, fmt.Errorf("vmdescription: last EOF marker at %d announces %d bytes, %d follow (stream cut short?)",
				p, n, len(tail)-p-5)
		}
		return p, int(n), nil
	}
	return 0, 0, errors.New("vmdescription: no EOF + VMDESCRIPTION record at the end of the stream")
}

// InspectStream checks that r (size bytes) is a complete QEMU migration stream:
// the QEVM header at the start and the EOF + VMDESCRIPTION record, with valid
// JSON, at the end. A stream cut short fails the second check.
func InspectStream(r io.ReaderAt, size int64) (StreamInfo, error) {
	info := StreamInfo{Size: size}
	head := make([]byte, min(size, 4096))
	if _, err := r.ReadAt(head, 0); err != nil && !errors.Is(err, io.EOF) {
		return info, fmt.Errorf("inspect stream: %w", err)
	}
	v, machine, err := parseStreamHeader(head)
	if err != nil {
		return info, fmt.Errorf("inspect stream: %w", err)
	}
	info.Version, info.Machine = v, machine

	tailLen := min(size, maxVMDescriptionLen+6)
	tail := make([]byte, tailLen)
	if _, err := r.ReadAt(tail, size-tailLen); err != nil && !errors.Is(err, io.EOF) {
		return info, fmt.Errorf("inspect stream: %w", err)
	}
	off, n, err := findVMDescription(tail)
	if err != nil {
		return info, fmt.Errorf("inspect stream: %w", err)
	}
	info.VMDescOffset = size - tailLen + int64(off)
	info.VMDescLen = n
	desc, err := parseVMDescription(tail[off+5:])
	if err != nil {
		return info, fmt.Errorf("inspect stream: %w", err)
	}
	info.PageSize = desc.PageSize
	for _, d := range desc.Devices {
		info.Devices = append(info.Devices, d.Name)
	}
	return info, nil
}

type vmDescription struct {
	PageSize int `json:"page_size"`
	Devices  []struct {
		Name string `json:"name"`
	} `json:"devices"`
}

func parseVMDescription(b []byte) (vmDescription, error) {
	var d vmDescription
	if err := json.Unmarshal(b, &d); err != nil {
		return d, fmt.Errorf("vmdescription json: %w", err)
	}
	if d.PageSize <= 0 || len(d.Devices) == 0 {
		return d, fmt.Errorf("vmdescription json: page_size %d, %d devices", d.PageSize, len(d.Devices))
	}
	return d, nil
}
