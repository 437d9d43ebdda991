"""One module per agent framework, each importing its framework only when it is used: install
the matching extra (`incidentdesk-client[langchain]`, `[openai-agents]`, `[pydantic-ai]`,
`[mcp]`)."""
