package qemustream

import "fmt"

// Stream framing constants, from QEMU's migration/savevm.c and ram.c.
const (
	fileMagic         = 0x5145564d // "QEVM"
	fileVersion       = 3
	fileVersionCompat = 2 // rejected by every QEMU since 2.x

	recEOF           = 0x00
	recSectionStart  = 0x01
	recSectionPart   = 0x02
	recSectionEnd    = 0x03
	recSectionFull   = 0x04
	recSubsection    = 0x05
	recVMDescription = 0x06
	recConfiguration = 0x07
	recCommand       = 0x08
	recFooter        = 0x7e

	// RAM record flags live in the low bits of the be64 header word, below
	// the target page size.
	flagZero         = 0x02
	flagMemSize      = 0x04
	flagPage         = 0x08
	flagEOS          = 0x10
	flagContinue     = 0x20
	flagXBZRLE       = 0x40
	flagHook         = 0x80
	flagCompressPage = 0x100
	flagMultifdFlush = 0x200

	// xbzrleEncoding is ENCODING_FLAG_XBZRLE, the only encoding byte QEMU
	// accepts in front of an XBZRLE page.
	xbzrleEncoding = 0x01

	ramSectionVersion = 4
)

// Limits that keep a corrupt stream from driving the reader into unbounded
// work or memory. Each is far above what a real QEMU writes.
const (
	maxMachineName  = 256  // machine type names are ~20 bytes ("pc-q35-7.2")
	maxCapabilities = 64   // QEMU validates one or two capabilities
	maxSections     = 4096 // section ids remembered before opaque-rest mode
	maxBlocks       = 1024 // RAM blocks named by MEM_SIZE
	maxHugePageSize = 1 << 40

	// DefaultMaxOpaque is the default bound on an opaque item's length.
	DefaultMaxOpaque = 64 << 10
	// DefaultMaxVMDescription is the default bound on the VMDESCRIPTION JSON
	// length; QEMU's own are tens of KiB.
	DefaultMaxVMDescription = 64 << 20
	// DefaultPageSize is the x86 target page size.
	DefaultPageSize = 4096
)

// RecordKind names a kind of RAM record, for Stats.Records.
type RecordKind uint8

// RAM record kinds.
const (
	RecMemSize RecordKind = iota
	RecZero
	RecPage
	RecXBZRLE
	RecCompressPage
	RecMultifdFlush
	RecEOS
	numRecordKinds
)

var recordNames = [numRecordKinds]string{"MEM_SIZE", "ZERO", "PAGE", "XBZRLE", "COMPRESS_PAGE", "MULTIFD_FLUSH", "EOS"}

func (k RecordKind) String() string {
	if k < numRecordKinds {
		return recordNames[k]
	}
	return fmt.Sprintf("RecordKind(%d)", uint8(k))
}

// Command is a QEMU_VM_COMMAND sub-command (enum qemu_vm_cmd in savevm.c).
type Command uint16

// Commands known to QEMU 7.2 through 10.x.
const (
	CmdOpenReturnPath  Command = 1
	CmdPing            Command = 2
	CmdPostcopyAdvise  Command = 3
	CmdPostcopyListen  Command = 4
	CmdPostcopyRun     Command = 5
	CmdRAMDiscard      Command = 6
	CmdPackaged        Command = 7
	CmdEnableCOLO      Command = 8
	CmdPostcopyResume  Command = 9
	CmdRecvBitmap      Command = 10
	CmdSwitchoverStart Command = 11 // QEMU 10.0
	numCommands                = 12
)

var commandNames = [numCommands]string{"INVALID", "OPEN_RETURN_PATH", "PING", "POSTCOPY_ADVISE",
	"POSTCOPY_LISTEN", "POSTCOPY_RUN", "POSTCOPY_RAM_DISCARD", "PACKAGED", "ENABLE_COLO",
	"POSTCOPY_RESUME", "RECV_BITMAP", "SWITCHOVER_START"}

func (c Command) String() string {
	if c < numCommands {
		return commandNames[c]
	}
	return fmt.Sprintf("Command(%d)", uint16(c))
}

// commandLen is the payload length QEMU's mig_cmd_args table requires, or -1
// where it varies (ADVISE is 0 or 16 and is checked separately).
var commandLen = [numCommands]int{-1, 0, 4, -1, 0, 0, -1, 4, 0, 0, -1, 0}

// compressBound is zlib's compressBound(n): the largest COMPRESS_PAGE body
// ram_load_precopy accepts for an n-byte page.
func compressBound(n int) int {
	return n + n>>12 + n>>14 + n>>25 + 13
}
