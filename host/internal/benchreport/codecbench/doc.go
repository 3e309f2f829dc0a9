// Package codecbench measures DWCP's data path for the performance report
// (issue 6): the datacenter pipeline against a plain relay (section 1), the
// internet pipeline's ratio by data pattern, by tier and with delta encoding
// (section 2, codec parts), and DWCP's codec plugins beside the zstd and lz4
// command-line tools (section 4, in part).
//
// Everything it reports is measured in the run through the product's own
// parts: codecs in their plugin processes (host/pluginhost), settings from
// host/modes' Plan, host/pipeline's Send and Receive over host/transport
// sessions with mutual TLS on loopback, the page stage of host/pagestage,
// and the real QEMU migration stream of the test guest.
//
// It owns the measurement procedures and the tables and charts they fill.
// It must not change what it measures (no private copies of codecs or
// pipeline stages), type in a number, or hide a measurement it could not
// make: a missing tool or input is a cell that says why.
package codecbench
