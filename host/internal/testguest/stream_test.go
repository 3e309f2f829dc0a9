package testguest

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

// synthStream lays out the two ends of a 7.2 precopy stream as savevm.c writes
// them: header, configuration with the machine type, an opaque middle, EOF and
// the VMDESCRIPTION JSON.
func synthStream(machine string, middle []byte, desc string) []byte {
	var b bytes.Buffer
	b.Write([]byte("QEVM"))
	_ = binary.Write(&b, binary.BigEndian, uint32(3))
	if machine != "" {
		b.WriteByte(secConfiguration)
		_ = binary.Write(&b, binary.BigEndian, uint32(len(machine)))
		b.WriteString(machine)
	}
	b.Write(middle)
	b.WriteByte(secEOF)
	b.WriteByte(secVMDescription)
	_ = binary.Write(&b, binary.BigEndian, uint32(len(desc)))
	b.WriteString(desc)
	return b.Bytes()
}

const testDesc = `{"page_size": 4096, "devices": [{"name": "timer", "instance_id": 0}, {"name": "cpu_common"}]}`

func TestInspectStream(t *testing.T) {
	// The middle holds bytes that look like an EOF + VMDESCRIPTION marker.
	middle := append([]byte{0x01, 0, 0, 0, 2, 0x00, 0x06, 0, 0, 0, 9}, bytes.Repeat([]byte{0xcc}, 5000)...)
	s := synthStream("pc-q35-7.2", middle, testDesc)
	info, err := InspectStream(bytes.NewReader(s), int64(len(s)))
	if err != nil {
		t.Fatal(err)
	}
	if info.Version != 3 || info.Machine != "pc-q35-7.2" || info.PageSize != 4096 ||
		strings.Join(info.Devices, ",") != "timer,cpu_common" || info.VMDescLen != len(testDesc) ||
		info.VMDescOffset != int64(len(s)-len(testDesc)-5) {
		t.Errorf("InspectStream = %+v", info)
	}

	noConfig := synthStream("", nil, testDesc)
	if info, err := InspectStream(bytes.NewReader(noConfig), int64(len(noConfig))); err != nil || info.Machine != "" {
		t.Errorf("stream without configuration: %+v, %v", info, err)
	}

	bad := map[string][]byte{
		"cut short":       s[:len(s)-10],
		"cut in middle":   s[:len(s)/2],
		"bad magic":       append([]byte("QEVX"), s[4:]...),
		"version 2":       append(append([]byte("QEVM"), 0, 0, 0, 2), s[8:]...),
		"header only":     s[:6],
		"not json":        synthStream("pc", nil, "{nope"),
		"no devices":      synthStream("pc", nil, `{"page_size": 4096, "devices": []}`),
		"long machine":    synthStream(strings.Repeat("m", maxMachineNameLen+1), nil, testDesc),
		"machine with nl": synthStream("pc\nq35", nil, testDesc),
		"empty":           {},
	}
	for name, b := range bad {
		if info, err := InspectStream(bytes.NewReader(b), int64(len(b))); err == nil {
			t.Errorf("%s: accepted as %+v", name, info)
		}
	}
}

func FuzzInspectStream(f *testing.F) {
	f.Add(synthStream("pc-q35-7.2", []byte{1, 2, 3}, testDesc))
	f.Add(synthStream("", nil, `{"page_size":1,"devices":[{}]}`))
	f.Add([]byte("QEVM\x00\x00\x00\x03\x07\xff\xff\xff\xff"))
	f.Add([]byte{0, 6, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		info, err := InspectStream(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		if !bytes.HasPrefix(b, []byte("QEVM\x00\x00\x00\x03")) {
			t.Fatalf("accepted without the QEVM v3 header")
		}
		if info.VMDescOffset+5+int64(info.VMDescLen) != int64(len(b)) || b[info.VMDescOffset] != secVMDescription {
			t.Fatalf("description at %d (+%d) does not end the %d-byte stream", info.VMDescOffset, info.VMDescLen, len(b))
		}
	})
}
