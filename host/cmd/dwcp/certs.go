package main

import (
	"fmt"
	"path/filepath"

	"github.com/dwcp/dwcp/host/certs"
	"github.com/spf13/cobra"
)

func newCertsCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "certs",
		Short: "Create a development CA and host certificates for mutual TLS between hosts",
		Long: "DWCP hosts authenticate each other with x509 certificates signed by one site CA.\n" +
			"For a lab or a first try:\n\n" +
			"  dwcp certs init  --dir certs\n" +
			"  dwcp certs issue --dir certs --name host1 --ip 192.0.2.1\n" +
			"  dwcp certs issue --dir certs --name host2 --ip 192.0.2.2\n\n" +
			"then give each host the directory with ca.pem and its own NAME.pem/NAME-key.pem\n" +
			"(ca-key.pem stays with whoever issues certificates).",
	}
	var dir string
	var force bool
	initCmd := &cobra.Command{
		Use:   "init",
		Short: "Create a development CA (ca.pem, ca-key.pem)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ca, err := certs.Init(dir, certs.InitOptions{Force: force})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "created CA %q, valid until %s, in %s\n",
				ca.Cert.Subject.CommonName, ca.Cert.NotAfter.Format("2006-01-02"), filepath.Join(dir, certs.CAFile))
			return nil
		},
	}
	initCmd.Flags().StringVar(&dir, "dir", "certs", "directory for the CA files")
	initCmd.Flags().BoolVar(&force, "force", false, "replace an existing CA (every certificate it signed stops working)")

	var name string
	var dnsNames, ips []string
	issueCmd := &cobra.Command{
		Use:   "issue",
		Short: "Issue a host certificate signed by the CA in --dir",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			parsed, err := certs.ParseIPs(ips)
			if err != nil {
				return err
			}
			h, err := certs.IssueFile(dir, certs.HostRequest{Name: name, DNSNames: dnsNames, IPs: parsed}, force)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "issued %s (DNS %v, IP %v), valid until %s: %s, %s\n",
				name, h.Cert.DNSNames, h.Cert.IPAddresses, h.Cert.NotAfter.Format("2006-01-02"),
				filepath.Join(dir, certs.CertFile(name)), filepath.Join(dir, certs.KeyFile(name)))
			return nil
		},
	}
	issueCmd.Flags().StringVar(&dir, "dir", "certs", "directory holding the CA; the host files are written there")
	issueCmd.Flags().StringVar(&name, "name", "", "host name (certificate CN and first DNS name)")
	issueCmd.Flags().StringSliceVar(&dnsNames, "dns", nil, "further DNS names")
	issueCmd.Flags().StringSliceVar(&ips, "ip", nil, "IP addresses peers dial this host at")
	issueCmd.Flags().BoolVar(&force, "force", false, "replace an existing certificate of that name")
	_ = issueCmd.MarkFlagRequired("name")
	cmd.AddCommand(initCmd, issueCmd)
	return cmd
}
