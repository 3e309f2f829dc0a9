// Package sections composes the measurement parts into the report's four
// sections, in the order and with the titles of the validation report.
package sections

import (
	"github.com/dwcp/dwcp/host/internal/benchreport"
	"github.com/dwcp/dwcp/host/internal/benchreport/codecbench"
	"github.com/dwcp/dwcp/host/internal/benchreport/livebench"
	"github.com/dwcp/dwcp/host/internal/benchreport/modebench"
)

// All returns the report's sections.
func All() []benchreport.SectionSpec {
	return []benchreport.SectionSpec{
		benchreport.Compose("datacenter", "Datacenter mode",
			"Throughput first: DWCP's datacenter pipeline against a plain relay that moves the same bytes with no processing, on this machine's loopback.",
			codecbench.Datacenter),
		benchreport.Compose("internet", "Internet mode",
			"Bytes first: what the internet pipeline sends for each kind of data, by tier, with delta encoding, and whole live migrations over the WAN lab's internet-like links.",
			codecbench.InternetCodecs, livebench.InternetMigrations),
		benchreport.Compose("hybrid", "Hybrid mode",
			"Measured in the WAN lab: how well DWCP recognises the link it is on, how fast it follows a change, and the adaptive controller against fixed settings.",
			modebench.Hybrid),
		benchreport.Compose("sota", "Against the state of the art measurable here",
			"QEMU's own live migration and the zstd/lz4 command-line tools, measured in the same run on the same data.",
			livebench.QEMUNative, codecbench.CLITools),
	}
}
