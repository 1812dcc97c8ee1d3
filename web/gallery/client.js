// The API client: the /ipa/ routes' addresses and one request helper whose errors carry the server's message.
// Importing this module does nothing.

// ``dataset()`` gives the dataset the gallery shows now (the addresses follow it).
export function createClient(apiBase, dataset) {
  const base = (apiBase ?? "").replace(/\/$/, "");
  const url = (path) => `${base}/ipa${path}`;
  const dsUrl = (path = "") => url(`/datasets/${encodeURIComponent(dataset())}${path}`);
  const fileUrl = (id, name) => dsUrl(`/samples/${id}/files/${encodeURIComponent(name)}`);

  async function request(path, init) {
    const response = await fetch(path, init);
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (!response.ok) throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
    return body;
  }

  return { url, dsUrl, fileUrl, request };
}
