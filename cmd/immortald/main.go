// Command immortald runs and inspects lives: named processes that survive the
// death of the daemon that runs them. See the README for the commands.
package main

import (
	"os"

	"github.com/immortald/immortald/cli"
)

func main() {
	os.Exit(cli.Execute(os.Args[1:], os.Stdout, os.Stderr))
}
