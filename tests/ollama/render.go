// Renders an Ollama Modelfile TEMPLATE the way Ollama does, for tests/test_ollama_modelfile.py.
//
// A port of the parts of github.com/ollama/ollama/template/template.go (MIT) that a chat request goes
// through: the template function map, Parse's options, collate (system messages joined, consecutive
// messages of one role merged except tool results), the template-facing message, tool-call and tool
// types, and the Values map of Execute's messages path; plus thinking.InferTags (thinking/template.go),
// which decides whether Ollama treats a model as thinking-capable and which tags it parses.
// Only the standard library, so `go build` needs no network.
//
// The chat handler's default is ported too: since Ollama v0.12.4 (server/routes.go, #12533) a request that leaves
// `think` unset gets think=true when the model is thinking-capable (its template has thinking tags), so the
// template sees IsThinkSet true; "before_0_12_4": true renders as older versions do (IsThinkSet false).
//
// stdin:  {"template": "...", "messages": [api.Message JSON], "tools": [api.Tool JSON], "think": null|bool, "before_0_12_4": bool}
// stdout: {"prompt": "...", "thinking_tags": ["<open>", "<close>"], "tools_json": ["{{ json . }} of each tool"]}
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
	"text/template/parse"
	"time"
)

var funcs = template.FuncMap{
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
	"currentDate": func(args ...string) string {
		return time.Now().Format("2006-01-02")
	},
}

// api.Message, api.ToolCall (the request side)
type toolCallFunction struct {
	Index     int            `json:"index"`
	Name      string         `json:"name"`
	Arguments map[string]any `json:"arguments"`
}
type toolCall struct {
	ID       string           `json:"id,omitempty"`
	Function toolCallFunction `json:"function"`
}
type message struct {
	Role       string     `json:"role"`
	Content    string     `json:"content"`
	Thinking   string     `json:"thinking,omitempty"`
	ToolCalls  []toolCall `json:"tool_calls,omitempty"`
	ToolName   string     `json:"tool_name,omitempty"`
	ToolCallID string     `json:"tool_call_id,omitempty"`
}

// api.ToolProperty and the template-facing tool types, fields in Ollama's order
type toolProperty struct {
	AnyOf       []toolProperty          `json:"anyOf,omitempty"`
	Type        any                     `json:"type,omitempty"`
	Items       any                     `json:"items,omitempty"`
	Description string                  `json:"description,omitempty"`
	Enum        []any                   `json:"enum,omitempty"`
	Properties  map[string]toolProperty `json:"properties,omitempty"`
	Required    []string                `json:"required,omitempty"`
}
type templateToolFunctionParameters struct {
	Type       string                  `json:"type"`
	Defs       any                     `json:"$defs,omitempty"`
	Items      any                     `json:"items,omitempty"`
	Required   []string                `json:"required,omitempty"`
	Properties map[string]toolProperty `json:"properties"`
}
type templateToolFunction struct {
	Name        string                         `json:"name"`
	Description string                         `json:"description"`
	Parameters  templateToolFunctionParameters `json:"parameters"`
}
type templateTool struct {
	Type     string               `json:"type"`
	Items    any                  `json:"items,omitempty"`
	Function templateToolFunction `json:"function"`
}

func (t templateTool) String() string {
	b, _ := json.Marshal(t)
	return string(b)
}

type templateArgs map[string]any

func (t templateArgs) String() string {
	if t == nil {
		return "{}"
	}
	b, _ := json.Marshal(t)
	return string(b)
}

type templateToolCallFunction struct {
	Index     int
	Name      string
	Arguments templateArgs
}
type templateToolCall struct {
	ID       string
	Function templateToolCallFunction
}
type templateMessage struct {
	Role       string
	Content    string
	Thinking   string
	ToolCalls  []templateToolCall
	ToolName   string
	ToolCallID string
}

func collate(msgs []message) (string, []*message) {
	var system []string
	var collated []*message
	for i := range msgs {
		if msgs[i].Role == "system" {
			system = append(system, msgs[i].Content)
		}
		if len(collated) > 0 && collated[len(collated)-1].Role == msgs[i].Role && msgs[i].Role != "tool" {
			collated[len(collated)-1].Content += "\n\n" + msgs[i].Content
		} else {
			collated = append(collated, &msgs[i])
		}
	}
	return strings.Join(system, "\n\n"), collated
}

func convertMessages(messages []*message) []*templateMessage {
	result := make([]*templateMessage, len(messages))
	for i, msg := range messages {
		var calls []templateToolCall
		for _, tc := range msg.ToolCalls {
			calls = append(calls, templateToolCall{ID: tc.ID, Function: templateToolCallFunction{
				Index: tc.Function.Index, Name: tc.Function.Name, Arguments: templateArgs(tc.Function.Arguments)}})
		}
		result[i] = &templateMessage{Role: msg.Role, Content: msg.Content, Thinking: msg.Thinking,
			ToolCalls: calls, ToolName: msg.ToolName, ToolCallID: msg.ToolCallID}
	}
	return result
}

// thinking.InferTags: a range over .Messages whose nearest list around {{ .Thinking }} starts and ends
// with text; that text, trimmed, is the pair of tags.
func templateVisit(n parse.Node, enterFn func(parse.Node) bool, exitFn func(parse.Node)) {
	if n == nil || !enterFn(n) {
		return
	}
	switch x := n.(type) {
	case *parse.ListNode:
		for _, c := range x.Nodes {
			templateVisit(c, enterFn, exitFn)
		}
	case *parse.BranchNode:
		if x.Pipe != nil {
			templateVisit(x.Pipe, enterFn, exitFn)
		}
		if x.List != nil {
			templateVisit(x.List, enterFn, exitFn)
		}
		if x.ElseList != nil {
			templateVisit(x.ElseList, enterFn, exitFn)
		}
	case *parse.ActionNode:
		templateVisit(x.Pipe, enterFn, exitFn)
	case *parse.WithNode:
		templateVisit(&x.BranchNode, enterFn, exitFn)
	case *parse.RangeNode:
		templateVisit(&x.BranchNode, enterFn, exitFn)
	case *parse.IfNode:
		templateVisit(&x.BranchNode, enterFn, exitFn)
	case *parse.TemplateNode:
		templateVisit(x.Pipe, enterFn, exitFn)
	case *parse.PipeNode:
		for _, c := range x.Cmds {
			templateVisit(c, enterFn, exitFn)
		}
	case *parse.CommandNode:
		for _, a := range x.Args {
			templateVisit(a, enterFn, exitFn)
		}
	}
	if exitFn != nil {
		exitFn(n)
	}
}

func rangeUsesField(rangeNode *parse.RangeNode, field string) bool {
	found := false
	templateVisit(rangeNode.BranchNode.Pipe, func(n parse.Node) bool {
		if x, ok := n.(*parse.FieldNode); ok && x.Ident[0] == field {
			found = true
		}
		return true
	}, nil)
	return found
}

func inferTags(t *template.Template) (string, string) {
	ancestors := []parse.Node{}
	openingTag, closingTag := "", ""
	enterFn := func(n parse.Node) bool {
		ancestors = append(ancestors, n)
		if x, ok := n.(*parse.FieldNode); ok && len(x.Ident) > 0 && x.Ident[0] == "Thinking" {
			var mostRecentRange *parse.RangeNode
			for i := len(ancestors) - 1; i >= 0; i-- {
				if r, ok := ancestors[i].(*parse.RangeNode); ok {
					mostRecentRange = r
					break
				}
			}
			if mostRecentRange == nil || !rangeUsesField(mostRecentRange, "Messages") {
				return true
			}
			for i := len(ancestors) - 1; i >= 0; i-- {
				if l, ok := ancestors[i].(*parse.ListNode); ok {
					if t, ok := l.Nodes[0].(*parse.TextNode); ok {
						openingTag = strings.TrimSpace(t.String())
					}
					if t, ok := l.Nodes[len(l.Nodes)-1].(*parse.TextNode); ok {
						closingTag = strings.TrimSpace(t.String())
					}
					break
				}
			}
		}
		return true
	}
	exitFn := func(n parse.Node) { ancestors = ancestors[:len(ancestors)-1] }
	templateVisit(t.Tree.Root, enterFn, exitFn)
	return openingTag, closingTag
}

func main() {
	var in struct {
		Template string         `json:"template"`
		Messages []message      `json:"messages"`
		Tools    []templateTool `json:"tools"`
		Think    *bool          `json:"think"`
		Legacy   bool           `json:"before_0_12_4"`
	}
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fmt.Fprintln(os.Stderr, "bad input:", err)
		os.Exit(2)
	}
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(in.Template)
	if err != nil {
		fmt.Fprintln(os.Stderr, "parse:", err)
		os.Exit(1)
	}
	system, messages := collate(in.Messages)
	var tools []templateTool
	if len(in.Tools) > 0 {
		tools = in.Tools
	}
	open, close := inferTags(tmpl)
	if in.Think == nil && !in.Legacy && open != "" && close != "" {
		on := true
		in.Think = &on
	}
	think := in.Think != nil && *in.Think
	thinkLevel := ""
	if think {
		thinkLevel = "medium" // api.ThinkValue.String() of true
	}
	var b strings.Builder
	if err := tmpl.Execute(&b, map[string]any{
		"System":     system,
		"Messages":   convertMessages(messages),
		"Tools":      tools,
		"Response":   "",
		"Think":      think,
		"ThinkLevel": thinkLevel,
		"IsThinkSet": in.Think != nil,
	}); err != nil {
		fmt.Fprintln(os.Stderr, "execute:", err)
		os.Exit(1)
	}
	toolsJSON := []string{}
	for _, tool := range tools {
		toolsJSON = append(toolsJSON, funcs["json"].(func(any) string)(tool))
	}
	out, _ := json.Marshal(map[string]any{"prompt": b.String(), "thinking_tags": []string{open, close}, "tools_json": toolsJSON})
	os.Stdout.Write(out)
}
