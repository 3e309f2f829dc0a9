package certs

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestInitIssueLoadTLS(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	ca, err := Init(dir, InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Init(dir, InitOptions{}); !errors.Is(err, ErrExists) {
		t.Fatalf("second Init: got %v, want ErrExists", err)
	}
	ips, err := ParseIPs([]string{"127.0.0.1", "::1"})
	if err != nil {
		t.Fatal(err)
	}
	h, err := IssueFile(dir, HostRequest{Name: "src.example", DNSNames: []string{"src"}, IPs: ips}, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := IssueFile(dir, HostRequest{Name: "src.example"}, false); !errors.Is(err, ErrExists) {
		t.Fatalf("re-issue: got %v, want ErrExists", err)
	}
	for _, f := range []string{CAKeyFile, KeyFile("src.example")} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", f, st.Mode().Perm())
		}
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %v, want 0700", st.Mode().Perm())
	}
	got, err := LoadHost(dir, "src.example")
	if err != nil {
		t.Fatal(err)
	}
	if !got.Cert.Equal(h.Cert) || !got.Key.Equal(h.Key) {
		t.Fatal("loaded host differs from issued host")
	}
	if err := got.Cert.CheckSignatureFrom(ca.Cert); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"src.example", "src", "127.0.0.1", "::1"} {
		if err := got.Cert.VerifyHostname(name); err != nil {
			t.Errorf("VerifyHostname(%s): %v", name, err)
		}
	}
	if err := got.Cert.VerifyHostname("dst.example"); err == nil {
		t.Error("certificate matches a name it was not issued for")
	}
	server, client, err := LoadTLS(dir, "src.example")
	if err != nil {
		t.Fatal(err)
	}
	if server.MinVersion != tls.VersionTLS13 || client.MinVersion != tls.VersionTLS13 {
		t.Error("configs are not TLS 1.3 only")
	}
	if server.ClientAuth != tls.RequireAndVerifyClientCert {
		t.Error("server does not require client certificates")
	}
}

// TestMutualTLS runs a real TLS 1.3 handshake with the loaded configs.
func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	if _, err := Init(dir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b"} {
		if _, err := IssueFile(dir, HostRequest{Name: n, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}, false); err != nil {
			t.Fatal(err)
		}
	}
	srvCfg, _, err := LoadTLS(dir, "a")
	if err != nil {
		t.Fatal(err)
	}
	_, cliCfg, err := LoadTLS(dir, "b")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srvCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		if err := tc.Handshake(); err != nil {
			done <- err
			return
		}
		peer := tc.ConnectionState().PeerCertificates[0].Subject.CommonName
		if peer != "b" {
			done <- errors.New("server saw peer " + peer)
			return
		}
		_, err = c.Write([]byte("ok"))
		done <- err
	}()
	cliCfg.ServerName = "a"
	c, err := tls.Dial("tcp", ln.Addr().String(), cliCfg)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2)
	if _, err := c.Read(buf); err != nil || string(buf) != "ok" {
		t.Fatalf("read %q, %v", buf, err)
	}
	c.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestRefusals(t *testing.T) {
	dir := t.TempDir()
	ca, err := Init(dir, InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "../x", "a/b", "ca", ".hidden", "x y"} {
		if _, err := ca.Issue(HostRequest{Name: bad}); !errors.Is(err, ErrBadName) {
			t.Errorf("name %q: got %v, want ErrBadName", bad, err)
		}
	}
	if _, err := ParseIPs([]string{"300.1.1.1"}); err == nil {
		t.Error("bad IP accepted")
	}
	// An expired host certificate fails LoadTLS with a clear error.
	old, err := ca.Issue(HostRequest{Name: "old", NotBefore: time.Now().Add(-48 * time.Hour), Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := WriteHost(dir, old, false); err != nil {
		t.Fatal(err)
	}
	_, _, err = LoadTLS(dir, "old")
	var inv x509.CertificateInvalidError
	if !errors.As(err, &inv) || inv.Reason != x509.Expired {
		t.Fatalf("expired host: got %v", err)
	}
	// A host of another CA does not verify against this directory's CA.
	other, err := NewCA(CAOptions{CommonName: "other"})
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := other.Issue(HostRequest{Name: "stranger"})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := WriteHost(dir, stranger, false); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadTLS(dir, "stranger"); err == nil || !strings.Contains(err.Error(), "does not verify") {
		t.Fatalf("foreign host: got %v", err)
	}
	// A key readable by others is refused.
	if err := os.Chmod(filepath.Join(dir, KeyFile("old")), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadHost(dir, "old"); err == nil || !strings.Contains(err.Error(), "0600") {
		t.Fatalf("world-readable key: got %v", err)
	}
	// A mismatched key and certificate are refused.
	if err := os.Rename(filepath.Join(dir, KeyFile("stranger")), filepath.Join(dir, KeyFile("x"))); err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := EncodeKey(old.Key)
	if err := os.WriteFile(filepath.Join(dir, KeyFile("stranger")), keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadHost(dir, "stranger"); !errors.Is(err, ErrBadPEM) {
		t.Fatalf("mismatched key: got %v", err)
	}
	// Damaged files.
	if err := os.WriteFile(filepath.Join(dir, CAFile), []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCA(dir); !errors.Is(err, ErrBadPEM) {
		t.Fatalf("damaged CA: got %v", err)
	}
	if _, err := LoadCA(t.TempDir()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing CA: got %v", err)
	}
	// Force replaces.
	if _, err := Init(dir, InitOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCA(dir); err != nil {
		t.Fatal(err)
	}
}

// FuzzParsePEM: whatever the bytes, the PEM parsers return a value or an
// ErrBadPEM error, never panic.
func FuzzParsePEM(f *testing.F) {
	ca, err := NewCA(CAOptions{})
	if err != nil {
		f.Fatal(err)
	}
	keyPEM, _ := EncodeKey(ca.Key)
	f.Add(EncodeCert(ca.Cert))
	f.Add(keyPEM)
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n"))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		if c, err := ParseCertPEM(data); err != nil {
			if !errors.Is(err, ErrBadPEM) {
				t.Fatalf("cert error without ErrBadPEM: %v", err)
			}
		} else if c == nil {
			t.Fatal("nil certificate without error")
		}
		if k, err := ParseKeyPEM(data); err != nil {
			if !errors.Is(err, ErrBadPEM) {
				t.Fatalf("key error without ErrBadPEM: %v", err)
			}
		} else if k == nil {
			t.Fatal("nil key without error")
		}
	})
}
