/** Search over the history of the user's chats: hits with their highlighted words; picking one opens its chat at it. */
import { useEffect, useState } from "preact/hooks"
import type { SearchHit } from "../src/client/index.ts"
import { errorText } from "./hooks.ts"
import type { Store } from "./store.ts"

/** The snippet as text with <mark>ed matches (text nodes: nothing in a message is markup). */
function Snippet({ hit }: { hit: SearchHit }) {
  const parts = []
  let at = 0
  for (const [start, end] of hit.highlights) {
    parts.push(hit.snippet.slice(at, start), <mark key={start}>{hit.snippet.slice(start, end)}</mark>)
    at = end
  }
  parts.push(hit.snippet.slice(at))
  return <span class="snippet">{parts}</span>
}

export function MessageSearch({ store }: { store: Store }) {
  const [query, setQuery] = useState("")
  const [hits, setHits] = useState<ReadonlyArray<SearchHit>>([])
  const [next, setNext] = useState<string | null>(null)
  const [error, setError] = useState<string | undefined>()

  useEffect(() => {
    const q = query.trim()
    setError(undefined)
    if (q === "") {
      setHits([])
      setNext(null)
      return
    }
    let current = true
    const timer = setTimeout(() => {
      store.client.search({ q }).then(
        (page) => {
          if (!current) return
          setHits(page.hits)
          setNext(page.next)
        },
        (cause) => current && setError(errorText(cause))
      )
    }, 250)
    return () => {
      current = false
      clearTimeout(timer)
    }
  }, [query])

  const more = () => {
    if (next === null) return
    store.client.search({ q: query.trim(), before: next }).then(
      (page) => {
        setHits([...hits, ...page.hits])
        setNext(page.next)
      },
      (cause) => setError(errorText(cause))
    )
  }

  return (
    <div class="message-search">
      <input
        data-testid="message-search"
        type="search"
        placeholder="Search messages"
        maxLength={200}
        value={query}
        onInput={(e) => setQuery(e.currentTarget.value)}
      />
      {query.trim() !== "" && (
        <ul class="results" data-testid="message-results">
          {error !== undefined && <li class="muted">{error}</li>}
          {error === undefined && hits.length === 0 && <li class="muted">No messages found</li>}
          {hits.map((hit) => {
            const chat = store.chats.get(hit.chatId)
            return (
              <li key={`${hit.chatId}/${hit.seq}`}>
                <button
                  type="button"
                  data-testid="message-result"
                  data-chat-id={hit.chatId}
                  data-seq={hit.seq}
                  onClick={() => {
                    void store.jumpTo(hit.chatId, hit.seq)
                    setQuery("")
                  }}
                >
                  <small>
                    {chat === undefined ? "" : `${store.chatTitle(chat)} · `}
                    {store.nameOf(hit.authorId)} · {new Date(hit.createdAt).toLocaleString()}
                  </small>
                  <Snippet hit={hit} />
                </button>
              </li>
            )
          })}
          {next !== null && (
            <li>
              <button type="button" class="small" onClick={more}>
                More results
              </button>
            </li>
          )}
        </ul>
      )}
    </div>
  )
}
