package modes

import (
	"bytes"
	"encoding/json"
	"fmt"
	"github.com/dwcp/dwcp/host/internal/units"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

// Overrides are the user's manual settings, read from a JSON file
// (docs/modes.md, "Overrides"):
//
//	{
//	  "version": 1,
//	  "mode": "hybrid",                       // every peer (optional)
//	  "peers": {"dst-a": "internet", "dst-b": "datacenter"},
//	  "thresholds": {"datacenter_max_rtt": "1ms", "internet_max_bandwidth": "500mbit",
//	                 "internet_min_loss": "1%", "margin": 0.2, "hold": "5s"}
//	}
type Overrides struct {
	Mode       Mode
	Peers      map[string]Mode
	Thresholds Thresholds // zero fields: defaults
}

// overridesDoc is the file's layout: human units as strings.
type overridesDoc struct {
	Version    int               `json:"version"`
	Mode       string            `json:"mode"`
	Peers      map[string]string `json:"peers"`
	Thresholds struct {
		DatacenterMaxRTT       string   `json:"datacenter_max_rtt"`
		DatacenterMinBandwidth string   `json:"datacenter_min_bandwidth"`
		InternetMinRTT         string   `json:"internet_min_rtt"`
		InternetMaxBandwidth   string   `json:"internet_max_bandwidth"`
		InternetMinLoss        string   `json:"internet_min_loss"`
		Margin                 *float64 `json:"margin"`
		Hold                   string   `json:"hold"`
	} `json:"thresholds"`
}

const maxOverridesFile = 1 << 20

// LoadOverrides reads an overrides file. A missing file is no override.
func LoadOverrides(path string) (Overrides, error) {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return Overrides{}, nil
	}
	if err != nil {
		return Overrides{}, fmt.Errorf("load mode overrides: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxOverridesFile+1))
	if err != nil {
		return Overrides{}, fmt.Errorf("load mode overrides %s: %w", path, err)
	}
	o, err := ParseOverrides(data)
	if err != nil {
		return Overrides{}, fmt.Errorf("load mode overrides %s: %w", path, err)
	}
	return o, nil
}

// ParseOverrides decodes and checks the contents of an overrides file.
func ParseOverrides(data []byte) (Overrides, error) {
	var o Overrides
	if len(data) > maxOverridesFile {
		return o, fmt.Errorf("overrides of %d bytes (limit %d): %w", len(data), maxOverridesFile, ErrBadConfig)
	}
	var doc overridesDoc
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		return o, fmt.Errorf("overrides: %v: %w", err, ErrBadConfig)
	}
	if doc.Version != 1 {
		return o, fmt.Errorf("overrides version %d, want 1: %w", doc.Version, ErrBadConfig)
	}
	var err error
	if doc.Mode != "" {
		if o.Mode, err = ParseMode(doc.Mode); err != nil {
			return o, fmt.Errorf("overrides mode: %w", err)
		}
	}
	if len(doc.Peers) > maxCachePeers {
		return o, fmt.Errorf("overrides for %d peers (limit %d): %w", len(doc.Peers), maxCachePeers, ErrBadConfig)
	}
	o.Peers = make(map[string]Mode, len(doc.Peers))
	for name, ms := range doc.Peers {
		if err := CheckPeerName(name); err != nil {
			return o, fmt.Errorf("overrides: %w", err)
		}
		m, err := ParseMode(ms)
		if err != nil {
			return o, fmt.Errorf("overrides for peer %q: %w", name, err)
		}
		o.Peers[name] = m
	}
	t := &o.Thresholds
	th := doc.Thresholds
	for _, d := range []struct {
		s   string
		dst *time.Duration
		key string
	}{{th.DatacenterMaxRTT, &t.DatacenterMaxRTT, "datacenter_max_rtt"}, {th.InternetMinRTT, &t.InternetMinRTT, "internet_min_rtt"}, {th.Hold, &t.Hold, "hold"}} {
		if d.s == "" {
			continue
		}
		v, err := time.ParseDuration(d.s)
		if err != nil || v <= 0 || v > time.Minute {
			return o, fmt.Errorf("overrides threshold %s %q: want a duration in (0, 1m]: %w", d.key, d.s, ErrBadConfig)
		}
		*d.dst = v
	}
	for _, r := range []struct {
		s   string
		dst *float64
		key string
	}{{th.DatacenterMinBandwidth, &t.DatacenterMinBandwidth, "datacenter_min_bandwidth"}, {th.InternetMaxBandwidth, &t.InternetMaxBandwidth, "internet_max_bandwidth"}} {
		if r.s == "" {
			continue
		}
		v, err := ParseBitRate(r.s)
		if err != nil {
			return o, fmt.Errorf("overrides threshold %s: %w", r.key, err)
		}
		*r.dst = v
	}
	if th.InternetMinLoss != "" {
		if t.InternetMinLoss, err = parseFraction(th.InternetMinLoss); err != nil {
			return o, fmt.Errorf("overrides threshold internet_min_loss: %w", err)
		}
	}
	if th.Margin != nil {
		t.Margin = *th.Margin
		if t.Margin == 0 {
			// Zero means "default" in Thresholds; an explicit zero margin
			// is the smallest positive one.
			t.Margin = 1e-9
		}
	}
	if err := t.WithDefaults().Validate(); err != nil {
		return o, fmt.Errorf("overrides: %w", err)
	}
	return o, nil
}

// ParseBitRate reads a link rate in bits per second ("300mbit",
// "2.5Gbit/s", "800kbit", "1e9") and returns bytes per second.
func ParseBitRate(s string) (float64, error) {
	bits, err := units.ParseBits(s)
	bytes := bits / 8
	if err != nil || !(bytes > 0 && bytes <= maxBandwidth) {
		return 0, fmt.Errorf("rate %q: want bits per second such as 300mbit or 2.5gbit/s, up to 8 Tbit/s: %w", s, ErrBadConfig)
	}
	return bytes, nil
}

// parseFraction reads "0.5%" or "0.005".
func parseFraction(s string) (float64, error) {
	t := strings.TrimSpace(s)
	scale := 1.0
	if strings.HasSuffix(t, "%") {
		t, scale = strings.TrimSpace(strings.TrimSuffix(t, "%")), 100
	}
	v, err := strconv.ParseFloat(t, 64)
	v /= scale
	if err != nil || !(v > 0 && v < 1) {
		return 0, fmt.Errorf("fraction %q: want a value in (0, 100%%): %w", s, ErrBadConfig)
	}
	return v, nil
}

// Resolve picks a session's mode. In order: the migration's own choice
// (migration, 0 for none), the override for this peer, the overrides'
// global mode, and the classification of the measured path. manual says
// that the mode was chosen by the user and must not change mid-session.
func Resolve(peer string, migration Mode, o Overrides, p Path) (m Mode, manual bool, why string) {
	switch {
	case migration.Valid():
		return migration, true, fmt.Sprintf("mode %v set for this migration", migration)
	case o.Peers[peer].Valid():
		return o.Peers[peer], true, fmt.Sprintf("mode %v set for peer %q in the overrides file", o.Peers[peer], peer)
	case o.Mode.Valid():
		return o.Mode, true, fmt.Sprintf("mode %v set for every peer in the overrides file", o.Mode)
	}
	m = Classify(p, o.Thresholds)
	return m, false, fmt.Sprintf("path %v classifies as %v", p, m)
}
