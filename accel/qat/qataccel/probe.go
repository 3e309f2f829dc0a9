package qataccel

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Device is a QuickAssist endpoint seen on the PCI bus.
type Device struct {
	// Address is the PCI address, e.g. "0000:3d:00.0".
	Address string
	// DeviceID is the PCI device id (vendor is always Intel, 0x8086).
	DeviceID uint16
	// Model names the generation, e.g. "4xxx"; VF is true for an SR-IOV
	// virtual function.
	Model string
	VF    bool
	// Driver is the kernel driver bound to it ("4xxx", "vfio-pci", ...),
	// empty when none is.
	Driver string
}

func (d Device) String() string {
	kind := "PF"
	if d.VF {
		kind = "VF"
	}
	drv := d.Driver
	if drv == "" {
		drv = "no driver bound"
	}
	return fmt.Sprintf("%s (%s %s, id %#04x, %s)", d.Address, d.Model, kind, d.DeviceID, drv)
}

// Probe is what a look at the system found.
type Probe struct {
	// Devices are QAT endpoints found by PCI vendor and device id.
	Devices []Device
	// Drivers are the QAT kernel drivers registered on the PCI bus.
	Drivers []string
	// CtlNodes are the device nodes of Intel's out-of-tree QAT driver that
	// exist (the user-space library opens them).
	CtlNodes []string
	// Scanned counts the PCI devices examined.
	Scanned int
	// Err is set when the PCI bus could not be read at all (no sysfs).
	Err error
}

// Found reports whether any sign of QAT hardware was seen.
func (p Probe) Found() bool { return len(p.Devices) > 0 }

// Summary describes the probe in one line, for health details and logs.
func (p Probe) Summary() string {
	var b strings.Builder
	switch {
	case p.Err != nil:
		fmt.Fprintf(&b, "no QAT device found: the PCI bus could not be read (%v)", p.Err)
	case len(p.Devices) == 0:
		fmt.Fprintf(&b, "no QAT device found among %d PCI devices", p.Scanned)
	default:
		ds := make([]string, len(p.Devices))
		for i, d := range p.Devices {
			ds[i] = d.String()
		}
		fmt.Fprintf(&b, "QAT device(s) found: %s", strings.Join(ds, "; "))
	}
	if len(p.Drivers) > 0 {
		fmt.Fprintf(&b, "; QAT kernel driver(s) loaded: %s", strings.Join(p.Drivers, ","))
	} else {
		b.WriteString("; no QAT kernel driver loaded")
	}
	if len(p.CtlNodes) > 0 {
		fmt.Fprintf(&b, "; device nodes: %s", strings.Join(p.CtlNodes, ","))
	}
	return b.String()
}

// qatModels maps Intel PCI device ids to QAT generations, from the ids the
// Linux qat drivers bind (drivers/crypto/intel/qat).
var qatModels = map[uint16]struct {
	model string
	vf    bool
}{
	0x0435: {"dh895xcc", false}, 0x0443: {"dh895xcc", true},
	0x37c8: {"c62x", false}, 0x37c9: {"c62x", true},
	0x19e2: {"c3xxx", false}, 0x19e3: {"c3xxx", true},
	0x4940: {"4xxx", false}, 0x4941: {"4xxx", true},
	0x4942: {"401xx", false}, 0x4943: {"401xx", true},
	0x4944: {"402xx", false}, 0x4945: {"402xx", true},
	0x4946: {"420xx", false}, 0x4947: {"420xx", true},
}

// qatDrivers are the PCI driver names of the in-kernel QAT drivers; each
// appears under /sys/bus/pci/drivers once its module is loaded.
var qatDrivers = []string{"dh895xcc", "dh895xccvf", "c6xx", "c6xxvf", "c3xxx", "c3xxxvf", "4xxx", "4xxxvf", "420xx"}

// qatNodes are device nodes of Intel's out-of-tree QAT driver package.
var qatNodes = []string{"dev/qat_adf_ctl", "dev/qat_dev_processes", "dev/usdm_drv"}

// ProbeSystem looks for QAT hardware under root ("/" on a real system;
// tests pass a directory laid out like sysfs). It reads only: PCI vendor
// and device ids, the bound driver, registered drivers and device nodes.
func ProbeSystem(root string) Probe {
	var p Probe
	devDir := filepath.Join(root, "sys/bus/pci/devices")
	entries, err := os.ReadDir(devDir)
	if err != nil {
		p.Err = fmt.Errorf("read %s: %w", devDir, err)
	}
	for _, e := range entries {
		p.Scanned++
		dir := filepath.Join(devDir, e.Name())
		vendor, err := readHex16(filepath.Join(dir, "vendor"))
		if err != nil || vendor != 0x8086 {
			continue
		}
		id, err := readHex16(filepath.Join(dir, "device"))
		if err != nil {
			continue
		}
		m, ok := qatModels[id]
		if !ok {
			continue
		}
		d := Device{Address: e.Name(), DeviceID: id, Model: m.model, VF: m.vf}
		if link, err := os.Readlink(filepath.Join(dir, "driver")); err == nil {
			d.Driver = filepath.Base(link)
		}
		p.Devices = append(p.Devices, d)
	}
	for _, drv := range qatDrivers {
		if fi, err := os.Stat(filepath.Join(root, "sys/bus/pci/drivers", drv)); err == nil && fi.IsDir() {
			p.Drivers = append(p.Drivers, drv)
		}
	}
	for _, n := range qatNodes {
		if _, err := os.Stat(filepath.Join(root, n)); err == nil || !errors.Is(err, fs.ErrNotExist) {
			p.CtlNodes = append(p.CtlNodes, "/"+n)
		}
	}
	slices.SortFunc(p.Devices, func(a, b Device) int { return strings.Compare(a.Address, b.Address) })
	return p
}

// readHex16 reads a sysfs id file such as "0x8086\n".
func readHex16(path string) (uint16, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	s := strings.TrimPrefix(strings.TrimSpace(string(b)), "0x")
	v, err := strconv.ParseUint(s, 16, 16)
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", path, err)
	}
	return uint16(v), nil
}
