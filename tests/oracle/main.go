// Command reference-oracle judges image references with github.com/distribution/reference, the
// parser the kubelet and containerd use, so that pinhook's own parser can be compared with it.
//
//	reference-oracle extract FILE...   prints every string literal of the Go files, one JSON string per line
//	reference-oracle judge             reads JSON strings (one per line) and prints one JSON verdict per line
package main

import (
	"bufio"
	// go-digest offers an algorithm only when its hash is linked, as both are in the kubelet and
	// containerd; without these imports every digest would be "unsupported" here.
	_ "crypto/sha256"
	_ "crypto/sha512"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"sort"
	"strconv"

	"github.com/distribution/reference"
)

// verdict is what distribution makes of one input, as ParseNormalizedNamed reads it.
type verdict struct {
	Input  string `json:"input"`
	OK     bool   `json:"ok"`
	Domain string `json:"domain,omitempty"`
	Path   string `json:"path,omitempty"`
	Tag    string `json:"tag,omitempty"`
	Digest string `json:"digest,omitempty"`
	Error  string `json:"error,omitempty"`
}

func judge(s string) verdict {
	named, err := reference.ParseNormalizedNamed(s)
	if err != nil {
		return verdict{Input: s, Error: err.Error()}
	}
	v := verdict{Input: s, OK: true, Domain: reference.Domain(named), Path: reference.Path(named)}
	if t, ok := named.(reference.Tagged); ok {
		v.Tag = t.Tag()
	}
	if d, ok := named.(reference.Digested); ok {
		v.Digest = d.Digest().String()
	}
	return v
}

func extract(files []string) error {
	seen := map[string]bool{}
	fset := token.NewFileSet()
	for _, f := range files {
		file, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			return err
		}
		ast.Inspect(file, func(n ast.Node) bool {
			if lit, ok := n.(*ast.BasicLit); ok && lit.Kind == token.STRING {
				if s, err := strconv.Unquote(lit.Value); err == nil {
					seen[s] = true
				}
			}
			return true
		})
	}
	all := make([]string, 0, len(seen))
	for s := range seen {
		all = append(all, s)
	}
	sort.Strings(all)
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	enc := json.NewEncoder(out)
	for _, s := range all {
		if err := enc.Encode(s); err != nil {
			return err
		}
	}
	return nil
}

func judgeLines() error {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 0, 1<<16), 1<<24)
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	enc := json.NewEncoder(out)
	for in.Scan() {
		var s string
		if err := json.Unmarshal(in.Bytes(), &s); err != nil {
			return fmt.Errorf("line is not a JSON string: %w", err)
		}
		if err := enc.Encode(judge(s)); err != nil {
			return err
		}
	}
	return in.Err()
}

func main() {
	var err error
	switch {
	case len(os.Args) > 2 && os.Args[1] == "extract":
		err = extract(os.Args[2:])
	case len(os.Args) == 2 && os.Args[1] == "judge":
		err = judgeLines()
	default:
		err = fmt.Errorf("usage: reference-oracle extract FILE... | reference-oracle judge")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "reference-oracle:", err)
		os.Exit(1)
	}
}
