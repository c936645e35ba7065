/**
 * The client's event emitter (`client.on`) and its connection status. A
 * handler that throws is reported, never allowed to break the client or the
 * other handlers.
 */
import type { ClientEvents, Status } from "./Types.ts"

/** An error thrown by app code the client called (a handler, `onSession`): reported, then ignored. */
export const reportAppError = (error: unknown) => {
  if (typeof globalThis.reportError === "function") globalThis.reportError(error)
  else console.error(error)
}

export interface Events {
  readonly emit: <K extends keyof ClientEvents>(event: K, payload: ClientEvents[K]) => void
  readonly on: <K extends keyof ClientEvents>(event: K, handler: (payload: ClientEvents[K]) => void) => () => void
  readonly status: () => Status
  /** Moves to `next`, telling `status` handlers when it changes. */
  readonly setStatus: (next: Status) => void
}

export const makeEvents = (): Events => {
  const handlers = new Map<keyof ClientEvents, Set<(payload: any) => void>>()
  let status: Status = "idle"

  const emit = <K extends keyof ClientEvents>(event: K, payload: ClientEvents[K]) => {
    for (const handler of [...(handlers.get(event) ?? [])]) {
      try {
        handler(payload)
      } catch (error) {
        reportAppError(error)
      }
    }
  }

  const on = <K extends keyof ClientEvents>(event: K, handler: (payload: ClientEvents[K]) => void) => {
    const set = handlers.get(event) ?? new Set()
    handlers.set(event, set)
    set.add(handler)
    return () => {
      set.delete(handler)
    }
  }

  const setStatus = (next: Status) => {
    if (status === next) return
    status = next
    emit("status", next)
  }

  return { emit, on, status: () => status, setStatus }
}
