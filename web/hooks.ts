import { useEffect, useState } from "preact/hooks"
import type { Store } from "./store.ts"

/** Re-renders the calling component whenever the store changes. */
export const useStore = (store: Store) => {
  const [, setTick] = useState(0)
  useEffect(() => store.subscribe(() => setTick((n) => n + 1)), [store])
}

/** `HH:MM` in the viewer's time zone, with the day when it is not today. */
export const timeOf = (iso: string) => {
  const date = new Date(iso)
  const time = date.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" })
  return date.toDateString() === new Date().toDateString()
    ? time
    : `${date.toLocaleDateString(undefined, { month: "short", day: "numeric" })}, ${time}`
}

export const errorText = (error: unknown) => (error instanceof Error ? error.message : String(error))
