// Package certs mints and loads the x509 material that DWCP hosts use to
// authenticate each other: a site (or development) CA and one certificate
// per host, ECDSA P-256, valid for both TLS server and client use, with the
// host's DNS names and IP addresses as SANs.
//
// It owns the file layout of a certificate directory (ca.pem, ca-key.pem,
// NAME.pem, NAME-key.pem; keys 0600, the directory 0700), writing files
// atomically, and the TLS 1.3 mutual-authentication configurations built
// from it (LoadTLS). The `dwcp certs` CLI is a thin layer over Init and
// IssueFile.
//
// What it must not do: overwrite an existing CA or key unless asked, write a
// key with group or world permissions, accept a name that is not a plain
// file name, or panic on a damaged PEM file (it returns a wrapped error).
// It is a development and small-site tool, not a PKI: there is no
// revocation, and a production site may use any CA whose files follow the
// same layout.
package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"regexp"
	"time"
)

// Defaults for validity. The host default is short enough that a leaked dev
// key expires on its own, long enough not to interrupt a test campaign.
const (
	DefaultCAValidity   = 10 * 365 * 24 * time.Hour
	DefaultHostValidity = 365 * 24 * time.Hour
	// clockSkew backdates NotBefore so that hosts whose clocks differ a
	// little accept a certificate minted a moment ago.
	clockSkew = 5 * time.Minute
)

// File names inside a certificate directory.
const (
	CAFile    = "ca.pem"
	CAKeyFile = "ca-key.pem"
)

// Sentinel errors callers branch on.
var (
	// ErrExists is returned when Init would overwrite a CA (or IssueFile a
	// host) that is already there and Force was not given.
	ErrExists = errors.New("already exists")
	// ErrBadName is returned for a host name that is empty or not a plain
	// DNS-style label sequence (it becomes a file name).
	ErrBadName = errors.New("invalid name")
	// ErrBadPEM is returned for a file that does not hold the expected PEM
	// block or whose contents do not parse.
	ErrBadPEM = errors.New("bad PEM")
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$`)

// CheckName reports whether name can name a host (and its files).
func CheckName(name string) error {
	if !nameRE.MatchString(name) || name == CAFile || name == "ca" {
		return fmt.Errorf("certs: host name %q: %w (letters, digits, '.', '-', '_'; not \"ca\")", name, ErrBadName)
	}
	return nil
}

// CA is a certificate authority: its certificate and private key.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// Host is a host's certificate and private key, signed by a CA.
type Host struct {
	Name string
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// CAOptions tunes NewCA. The zero value is a development CA valid for
// DefaultCAValidity.
type CAOptions struct {
	// CommonName of the CA; "DWCP development CA" if empty.
	CommonName string
	// Validity from now; DefaultCAValidity if zero.
	Validity time.Duration
}

// NewCA creates a CA with a fresh ECDSA P-256 key.
func NewCA(opts CAOptions) (*CA, error) {
	if opts.CommonName == "" {
		opts.CommonName = "DWCP development CA"
	}
	if opts.Validity == 0 {
		opts.Validity = DefaultCAValidity
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("certs: generate CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: opts.CommonName, Organization: []string{"DWCP"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(opts.Validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// The CA signs host certificates only, never another CA.
		MaxPathLen:     0,
		MaxPathLenZero: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("certs: sign CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("certs: parse CA certificate: %w", err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// HostRequest describes a host certificate to issue.
type HostRequest struct {
	// Name is the host's name: the certificate's CommonName, its first DNS
	// SAN and the base of its file names.
	Name string
	// DNSNames are further DNS SANs.
	DNSNames []string
	// IPs are IP SANs (a peer dialled by address verifies against these).
	IPs []net.IP
	// Validity from NotBefore; DefaultHostValidity if zero.
	Validity time.Duration
	// NotBefore overrides the start of validity (tests mint expired
	// certificates with it); zero means now minus a little clock skew.
	NotBefore time.Time
}

// Issue signs a new host certificate with a fresh ECDSA P-256 key. It is
// valid for both TLS server and client authentication, because every DWCP
// host both dials and accepts.
func (ca *CA) Issue(req HostRequest) (*Host, error) {
	if err := CheckName(req.Name); err != nil {
		return nil, err
	}
	if req.Validity == 0 {
		req.Validity = DefaultHostValidity
	}
	if req.NotBefore.IsZero() {
		req.NotBefore = time.Now().Add(-clockSkew)
	}
	notAfter := req.NotBefore.Add(req.Validity)
	if notAfter.After(ca.Cert.NotAfter) {
		// A certificate that outlives its CA fails verification on the
		// day the CA expires anyway; say so now.
		notAfter = ca.Cert.NotAfter
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("certs: generate key for %s: %w", req.Name, err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	dns := []string{req.Name}
	for _, d := range req.DNSNames {
		if d != "" && d != req.Name {
			dns = append(dns, d)
		}
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: req.Name, Organization: []string{"DWCP"}},
		NotBefore:    req.NotBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     dns,
		IPAddresses:  req.IPs,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("certs: sign certificate for %s: %w", req.Name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("certs: parse certificate for %s: %w", req.Name, err)
	}
	return &Host{Name: req.Name, Cert: cert, Key: key}, nil
}

func newSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("certs: serial number: %w", err)
	}
	return s.Add(s, big.NewInt(1)), nil
}

// TLSCertificate returns the host's certificate and key for tls.Config.
func (h *Host) TLSCertificate() tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{h.Cert.Raw}, PrivateKey: h.Key, Leaf: h.Cert}
}

// Pool returns a certificate pool holding only this CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// TLSConfigs returns the listener (server) and dialer (client) TLS
// configurations for host h under this CA: TLS 1.3 only, certificates
// required and verified on both sides. The client configuration has no
// ServerName: the dialer sets the expected peer name per connection.
func (ca *CA) TLSConfigs(h *Host) (server, client *tls.Config) {
	cert := h.TLSCertificate()
	pool := ca.Pool()
	server = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}
	client = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
	}
	return server, client
}
