package campaign

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/tendhq/tend/internal/errs"
)

// LoadDir reads every campaign in dir (*.yaml, *.yml), the templates they
// use from templatesDir (NAME.html for an email template, NAME.nudge.yaml
// for a nudge) and every layout in templatesDir/layouts (NAME.html, stored as
// layouts/NAME). A template the campaigns use that is not there is left for
// validation to report (it may already be stored).
func LoadDir(dir, templatesDir string) (Bundle, error) {
	var b Bundle
	files, err := filepath.Glob(filepath.Join(dir, "*.y*ml"))
	if err != nil {
		return b, err
	}
	sort.Strings(files)
	if len(files) == 0 {
		return b, errs.E(errs.Invalid, "no_campaigns", "no *.yaml campaign in %s", dir)
	}
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			return b, fmt.Errorf("campaign: %w", err)
		}
		defs, err := ParseYAML(src)
		if err != nil {
			var e *errs.Error
			if errors.As(err, &e) {
				e.Message = filepath.Base(f) + ": " + e.Message
			}
			return b, err
		}
		b.Campaigns = append(b.Campaigns, defs...)
	}
	seen := map[string]bool{}
	for _, d := range b.Campaigns {
		for _, name := range d.templateNames() {
			if seen[name] || !templRe.MatchString(name) || strings.Contains(name, "..") {
				continue
			}
			seen[name] = true
			for kind, path := range map[string]string{
				TemplateEmail: filepath.Join(templatesDir, filepath.FromSlash(name)+".html"),
				TemplateNudge: filepath.Join(templatesDir, filepath.FromSlash(name)+".nudge.yaml"),
			} {
				src, err := os.ReadFile(path)
				if errors.Is(err, fs.ErrNotExist) {
					continue
				}
				if err != nil {
					return b, fmt.Errorf("campaign: %w", err)
				}
				b.Templates = append(b.Templates, TemplateInput{Name: name, Kind: kind, Source: string(src)})
			}
		}
	}
	layouts, err := filepath.Glob(filepath.Join(templatesDir, "layouts", "*.html"))
	if err != nil {
		return b, err
	}
	for _, path := range layouts {
		src, err := os.ReadFile(path)
		if err != nil {
			return b, fmt.Errorf("campaign: %w", err)
		}
		name := layoutPrefix + strings.TrimSuffix(filepath.Base(path), ".html")
		if !seen[name] {
			b.Templates = append(b.Templates, TemplateInput{Name: name, Kind: TemplateLayout, Source: string(src)})
		}
	}
	sort.Slice(b.Templates, func(i, j int) bool { return b.Templates[i].Name < b.Templates[j].Name })
	return b, nil
}
