/**
 * The HTTP proxy O3 requests go through: from the process environment, read as curl and most HTTP
 * clients read it (`HTTPS_PROXY` for an https endpoint, `HTTP_PROXY` for http, `ALL_PROXY`, upper
 * or lower case; `NO_PROXY` lists the hosts reached directly), decided once for the endpoint so
 * that the SDK's path and the mount's native engine take the same way.
 */
import { getProxyForUrl } from 'proxy-from-env'
import { O3ConfigError } from './errors.js'

/** The proxy for `endpoint`, or undefined to connect directly. Only http:// proxies (CONNECT tunnels https). */
export function proxyFor(endpoint: string): URL | undefined {
  const found = getProxyForUrl(endpoint)
  if (!found) return undefined
  const named = `the proxy for ${endpoint} (${shownProxy(found)}, from HTTPS_PROXY / HTTP_PROXY / ALL_PROXY)`
  let url: URL
  try {
    url = new URL(found)
  } catch {
    throw new O3ConfigError(`${named} is not a URL; use http://host:port`)
  }
  if (url.protocol !== 'http:') throw new O3ConfigError(`${named} must be http://host:port; add the endpoint's host to NO_PROXY to go direct`)
  return url
}

/** A proxy URL for logs and messages: a user name and password in it are secrets. */
export function shownProxy(proxy: URL | string): string {
  try {
    const url = new URL(proxy)
    url.username = ''
    url.password = ''
    return url.toString().replace(/\/$/, '')
  } catch {
    return '(not a URL)'
  }
}
