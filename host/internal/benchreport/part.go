package benchreport

import (
	"context"
	"errors"
	"fmt"
)

// Part is a piece of a section measured by one package: the tables and
// charts it promises and the code that measures them. Sections are
// composed of parts so that the report's structure (the four
// sections) need not follow the code's (one package per kind of
// measurement).
type Part struct {
	Name    string // for logs and errors
	Tables  []string
	Figures []string
	Run     func(ctx context.Context, env *Env, s *Section) error
}

// Compose builds a section from parts. Every part runs even when an
// earlier one failed; the section's error joins theirs.
func Compose(key, title, intro string, parts ...Part) SectionSpec {
	spec := SectionSpec{Key: key, Title: title, Intro: intro}
	for _, p := range parts {
		spec.Tables = append(spec.Tables, p.Tables...)
		spec.Figures = append(spec.Figures, p.Figures...)
	}
	spec.Run = func(ctx context.Context, env *Env, s *Section) error {
		var errs []error
		for _, p := range parts {
			if ctx.Err() != nil {
				errs = append(errs, ctx.Err())
				break
			}
			env.Logf("  %s ...", p.Name)
			if err := runPart(ctx, env, p, s); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", p.Name, err))
			}
		}
		return errors.Join(errs...)
	}
	return spec
}

func runPart(ctx context.Context, env *Env, p Part, s *Section) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	return p.Run(ctx, env, s)
}

// Memo runs f once per run for key and returns its result to every
// caller, so that parts can share expensive measurements (one set of live
// migrations feeds two sections).
func (e *Env) Memo(key string, f func() (any, error)) (any, error) {
	e.mu.Lock()
	if e.memo == nil {
		e.memo = map[string]*memoEntry{}
	}
	m, ok := e.memo[key]
	if !ok {
		m = &memoEntry{}
		e.memo[key] = m
	}
	e.mu.Unlock()
	m.once.Do(func() { m.v, m.err = f() })
	return m.v, m.err
}
