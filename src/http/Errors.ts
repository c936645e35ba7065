/**
 * Every HTTP error, whoever raises it, leaves as the contract's
 * `{"error":{"code","message"}}` (docs/protocol.md "Errors"): schema failures of
 * HttpApi (400 with the failing path), oversize bodies (413), unknown routes
 * (404), and anything unexpected (logged with its cause, answered without
 * internals). Installed as a global router middleware. Every error answered
 * counts in `harmony_errors_total{code,transport="http"}` (a readiness probe's
 * 503 is not an error answered to a client).
 */
import { ByteSize, Cause, Effect, Metric } from "effect"
import { HttpMiddleware, HttpRouter, HttpServerError, HttpServerRequest, HttpServerResponse } from "effect/http"
import { MaxBodySize } from "effect/http/HttpIncomingMessage"
import { HttpApiError } from "effect/http-api"
import { errorsOf } from "../Metrics.ts"
import { errorBody } from "../schema/Errors.ts"

/** The largest HTTP request body accepted (message bodies are at most 4000 characters). */
export const MaxBodyBytes = 64 * 1024

const codeForStatus: Record<number, string> = {
  400: "bad_request",
  401: "unauthorized",
  403: "forbidden",
  404: "not_found",
  405: "not_found",
  409: "conflict",
  413: "too_large",
  415: "bad_request",
  429: "rate_limited",
  503: "unavailable"
}

export const errorResponse = (status: number, code: string, message: string) =>
  HttpServerResponse.jsonUnsafe(errorBody(code, message), { status })

const statusResponse = (status: number, message: string) =>
  errorResponse(status, codeForStatus[status] ?? "internal", message)

const describe = (cause: Cause.Cause<unknown>, request: HttpServerRequest.HttpServerRequest) => {
  const error = Cause.squash(cause)
  if (HttpApiError.HttpApiSchemaError.is(error) && error.kind !== "Body" && error.kind !== "ResponseHeaders") {
    const where = error.kind === "Payload" ? "body" : error.kind.toLowerCase()
    return statusResponse(400, `invalid ${where}: ${oneLine(error.cause.message)}`)
  }
  if (HttpApiError.HttpApiPayloadTooLarge.is(error)) return statusResponse(413, "request body too large")
  if (HttpServerError.isHttpServerError(error)) {
    const reason = error.reason
    if (reason._tag === "RouteNotFound") return statusResponse(404, `no route for ${request.method} ${pathOf(request)}`)
    if (reason._tag === "RequestParseError") {
      return reason.reason === "BodyTooLarge"
        ? statusResponse(413, `request body larger than ${MaxBodyBytes} bytes`)
        : statusResponse(400, "the request body could not be read")
    }
  }
  return undefined
}

const countError = (request: HttpServerRequest.HttpServerRequest, response: HttpServerResponse.HttpServerResponse) =>
  response.status < 400 || pathOf(request) === "/readyz"
    ? Effect.void
    : Metric.update(errorsOf(codeForStatus[response.status] ?? "internal", "http"), 1)

export const normalizeErrors = HttpRouter.middleware(
  HttpMiddleware.make((app) =>
    Effect.gen(function* () {
      const request = yield* HttpServerRequest.HttpServerRequest
      return yield* answer(app, request).pipe(Effect.tap((response) => countError(request, response)))
    })
  ),
  { global: true }
)

const answer = <E, R>(
  app: Effect.Effect<HttpServerResponse.HttpServerResponse, E, R>,
  request: HttpServerRequest.HttpServerRequest
) =>
  Effect.gen(function* () {
    const length = Number(request.headers["content-length"] ?? 0)
    if (length > MaxBodyBytes) return statusResponse(413, `request body larger than ${MaxBodyBytes} bytes`)
    const response = yield* app.pipe(
      Effect.catchCause((cause) => {
        if (Cause.hasInterruptsOnly(cause)) return Effect.failCause(cause)
        const known = describe(cause, request)
        if (known !== undefined) return Effect.succeed(known)
        return Effect.logError("unhandled error in HTTP request", cause).pipe(
          Effect.as(statusResponse(500, "internal error"))
        )
      })
    )
    if (response.status === 429) return moveRetryAfter(response)
    // HttpApi answers some failures itself: 415 as text, its own 400/413
    // with an empty body. Every error leaves in the contract's shape.
    if (response.status >= 400 && !isJson(response)) {
      return statusResponse(response.status === 415 ? 400 : response.status, defaultMessage(response.status))
    }
    return response
  }).pipe(Effect.provideService(MaxBodySize, ByteSize.bytes(MaxBodyBytes)))

/** A 429 leaves with `Retry-After` and the plain error body (see RateLimitedWire). */
const moveRetryAfter = (response: HttpServerResponse.HttpServerResponse) => {
  if (response.body._tag !== "Uint8Array") return response
  const body = JSON.parse(new TextDecoder().decode(response.body.body)) as {
    error: { code: string; message: string; retryAfter?: number }
  }
  const retryAfter = Math.max(1, Math.ceil(body.error.retryAfter ?? 1))
  return errorResponse(429, "rate_limited", body.error.message).pipe(
    HttpServerResponse.setHeader("retry-after", String(retryAfter))
  )
}

const isJson = (response: HttpServerResponse.HttpServerResponse) =>
  response.body._tag !== "Empty" && (response.body.contentType ?? "").startsWith("application/json")

const defaultMessage = (status: number) =>
  status === 415 ? "the request body must be application/json" : `request failed with status ${status}`

const pathOf = (request: HttpServerRequest.HttpServerRequest) => request.url.split("?")[0]
const oneLine = (text: string) => text.replace(/\s*\n\s*/g, " ").trim()
