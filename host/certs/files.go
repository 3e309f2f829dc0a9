package certs

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
)

// maxPEMFile bounds what is read from a certificate or key file: real ones
// are a few hundred bytes, so anything larger is not ours.
const maxPEMFile = 1 << 20

// CertFile and KeyFile name a host's files inside a certificate directory.
func CertFile(name string) string { return name + ".pem" }

// KeyFile names a host's private key file.
func KeyFile(name string) string { return name + "-key.pem" }

// EncodeCert returns the PEM encoding of a certificate.
func EncodeCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// EncodeKey returns the PEM (SEC 1 "EC PRIVATE KEY") encoding of a key.
func EncodeKey(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("certs: marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

// ParseCertPEM parses the first CERTIFICATE block of data.
func ParseCertPEM(data []byte) (*x509.Certificate, error) {
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return nil, fmt.Errorf("certs: no CERTIFICATE block: %w", ErrBadPEM)
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certs: parse certificate: %w: %w", ErrBadPEM, err)
		}
		return c, nil
	}
}

// ParseKeyPEM parses an ECDSA private key in "EC PRIVATE KEY" (SEC 1) or
// "PRIVATE KEY" (PKCS #8) form.
func ParseKeyPEM(data []byte) (*ecdsa.PrivateKey, error) {
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return nil, fmt.Errorf("certs: no private key block: %w", ErrBadPEM)
		}
		switch b.Type {
		case "EC PRIVATE KEY":
			k, err := x509.ParseECPrivateKey(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("certs: parse EC key: %w: %w", ErrBadPEM, err)
			}
			return k, nil
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("certs: parse PKCS #8 key: %w: %w", ErrBadPEM, err)
			}
			ek, ok := k.(*ecdsa.PrivateKey)
			if !ok {
				return nil, fmt.Errorf("certs: key is %T, want ECDSA: %w", k, ErrBadPEM)
			}
			return ek, nil
		}
	}
}

func readSmall(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("certs: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxPEMFile+1))
	if err != nil {
		return nil, fmt.Errorf("certs: read %s: %w", path, err)
	}
	if len(data) > maxPEMFile {
		return nil, fmt.Errorf("certs: %s is larger than %d bytes: %w", path, maxPEMFile, ErrBadPEM)
	}
	return data, nil
}

// writeFileAtomic writes data to path through a temporary file in the same
// directory and a rename, so a crash never leaves half a key behind.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return fmt.Errorf("certs: write %s: %w", path, err)
	}
	name := tmp.Name()
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(name)
		}
	}()
	if err := tmp.Chmod(perm); err != nil {
		return fmt.Errorf("certs: write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("certs: write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("certs: write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("certs: write %s: %w", path, err)
	}
	if err := os.Rename(name, path); err != nil {
		return fmt.Errorf("certs: write %s: %w", path, err)
	}
	ok = true
	return nil
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// InitOptions tunes Init.
type InitOptions struct {
	CA CAOptions
	// Force replaces an existing CA. Every host certificate the old CA
	// signed stops verifying.
	Force bool
}

// Init creates dir (0700) if needed and a new CA in it (ca.pem, and
// ca-key.pem with mode 0600). It refuses to replace an existing CA unless
// opts.Force is set.
func Init(dir string, opts InitOptions) (*CA, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("certs: init %s: %w", dir, err)
	}
	certPath, keyPath := filepath.Join(dir, CAFile), filepath.Join(dir, CAKeyFile)
	if !opts.Force && (exists(certPath) || exists(keyPath)) {
		return nil, fmt.Errorf("certs: init %s: CA %w (use force to replace it)", dir, ErrExists)
	}
	ca, err := NewCA(opts.CA)
	if err != nil {
		return nil, err
	}
	keyPEM, err := EncodeKey(ca.Key)
	if err != nil {
		return nil, err
	}
	// Key first: a certificate without its key is useless, a key without
	// its certificate is re-created by the next forced init.
	if err := writeFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return nil, err
	}
	if err := writeFileAtomic(certPath, EncodeCert(ca.Cert), 0o644); err != nil {
		return nil, err
	}
	return ca, nil
}

// LoadCA reads the CA certificate and key of dir and checks they belong
// together.
func LoadCA(dir string) (*CA, error) {
	cert, err := loadCert(filepath.Join(dir, CAFile))
	if err != nil {
		return nil, err
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("certs: %s is not a CA certificate: %w", filepath.Join(dir, CAFile), ErrBadPEM)
	}
	key, err := loadKey(filepath.Join(dir, CAKeyFile))
	if err != nil {
		return nil, err
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("certs: %s does not match %s: %w", CAKeyFile, CAFile, ErrBadPEM)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// LoadCACert reads only the CA certificate of dir (a host that verifies
// peers needs no CA key).
func LoadCACert(dir string) (*x509.Certificate, error) {
	return loadCert(filepath.Join(dir, CAFile))
}

func loadCert(path string) (*x509.Certificate, error) {
	data, err := readSmall(path)
	if err != nil {
		return nil, err
	}
	c, err := ParseCertPEM(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

func loadKey(path string) (*ecdsa.PrivateKey, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("certs: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("certs: key %s has mode %v, want 0600 (chmod 600 it)", path, st.Mode().Perm())
	}
	data, err := readSmall(path)
	if err != nil {
		return nil, err
	}
	k, err := ParseKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// WriteHost writes h's certificate (0644) and key (0600) into dir.
func WriteHost(dir string, h *Host, force bool) (certPath, keyPath string, err error) {
	certPath, keyPath = filepath.Join(dir, CertFile(h.Name)), filepath.Join(dir, KeyFile(h.Name))
	if !force && (exists(certPath) || exists(keyPath)) {
		return "", "", fmt.Errorf("certs: host %s %w in %s (use force to replace it)", h.Name, ErrExists, dir)
	}
	keyPEM, err := EncodeKey(h.Key)
	if err != nil {
		return "", "", err
	}
	if err := writeFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return "", "", err
	}
	if err := writeFileAtomic(certPath, EncodeCert(h.Cert), 0o644); err != nil {
		return "", "", err
	}
	return certPath, keyPath, nil
}

// IssueFile loads the CA of dir, issues a certificate for req and writes it
// next to the CA. With force it replaces an existing certificate of the
// same name.
func IssueFile(dir string, req HostRequest, force bool) (*Host, error) {
	if err := CheckName(req.Name); err != nil {
		return nil, err
	}
	ca, err := LoadCA(dir)
	if err != nil {
		return nil, err
	}
	h, err := ca.Issue(req)
	if err != nil {
		return nil, err
	}
	if _, _, err := WriteHost(dir, h, force); err != nil {
		return nil, err
	}
	return h, nil
}

// LoadHost reads host name's certificate and key from dir and checks they
// belong together.
func LoadHost(dir, name string) (*Host, error) {
	if err := CheckName(name); err != nil {
		return nil, err
	}
	cert, err := loadCert(filepath.Join(dir, CertFile(name)))
	if err != nil {
		return nil, err
	}
	key, err := loadKey(filepath.Join(dir, KeyFile(name)))
	if err != nil {
		return nil, err
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("certs: %s does not match %s: %w", KeyFile(name), CertFile(name), ErrBadPEM)
	}
	return &Host{Name: name, Cert: cert, Key: key}, nil
}

// LoadTLS builds the TLS configurations of host hostName from dir: server
// for the listener (client certificates required and verified against the
// CA), client for the dialer (the caller sets the expected peer name). Both
// are TLS 1.3 only. It fails if the host's certificate was not signed by
// the directory's CA or has expired, so a misconfigured host learns it at
// start-up rather than at its first migration.
func LoadTLS(dir, hostName string) (server, client *tls.Config, err error) {
	caCert, err := LoadCACert(dir)
	if err != nil {
		return nil, nil, err
	}
	h, err := LoadHost(dir, hostName)
	if err != nil {
		return nil, nil, err
	}
	ca := &CA{Cert: caCert}
	if _, err := h.Cert.Verify(x509.VerifyOptions{
		Roots:     ca.Pool(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return nil, nil, fmt.Errorf("certs: host %s certificate does not verify against %s: %w", hostName, filepath.Join(dir, CAFile), err)
	}
	server, client = ca.TLSConfigs(h)
	return server, client, nil
}

// ParseIPs parses a list of IP addresses (as the CLI's --ip flags give).
func ParseIPs(list []string) ([]net.IP, error) {
	out := make([]net.IP, 0, len(list))
	for _, s := range list {
		ip := net.ParseIP(s)
		if ip == nil {
			return nil, fmt.Errorf("certs: %q is not an IP address", s)
		}
		out = append(out, ip)
	}
	return out, nil
}
