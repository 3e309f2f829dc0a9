package main

import (
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Every flag of every command reads well in --help: pflag takes the first
// `quoted` word of a usage text as the flag's value name, so a usage that
// quotes a command ("of `dwcp serve`") printed "--to dwcp serve"; and a
// usage that states its own default must not also print a different one.
func TestFlagHelp(t *testing.T) {
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			name, usage := pflag.UnquoteUsage(f)
			if strings.ContainsAny(name, " \t") {
				t.Errorf("%s --%s shows the value name %q", c.CommandPath(), f.Name, name)
			}
			if strings.Contains(usage, "(default:") && f.DefValue != "" && f.DefValue != "0" && f.DefValue != "false" && f.DefValue != "[]" {
				t.Errorf("%s --%s states its default in its text and pflag prints another (%s): %q", c.CommandPath(), f.Name, f.DefValue, usage)
			}
		})
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRootCommand())
}
