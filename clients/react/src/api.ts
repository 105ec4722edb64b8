// The one module added to the seed's code (README "Deviations from the seed"): where the
// API is and how to authenticate. The seed's hook called fetch("/v1/...") on its own
// origin with no credential; it now calls apiFetch, which prefixes `baseUrl` and adds
// `Authorization: Token <token>`. Left unset, both do what the seed did.
export interface ApiConfig {
  baseUrl: string; // e.g. "https://downloads.example.com"; "" = the page's own origin
  token: string | null; // a DRF token (`manage.py drf_create_token USER`)
}

export const apiConfig: ApiConfig = { baseUrl: "", token: null };

export function configureApi(config: Partial<ApiConfig>): void {
  Object.assign(apiConfig, config);
}

export function apiFetch(path: string, init: RequestInit = {}): Promise<Response> {
  const headers = new Headers(init.headers);
  if (apiConfig.token) {
    headers.set("Authorization", `Token ${apiConfig.token}`);
  }
  return fetch(`${apiConfig.baseUrl.replace(/\/+$/, "")}${path}`, { ...init, headers });
}
