// Small DOM helpers shared by the gallery's views. Importing this module does nothing (the stylesheet is added when
// a gallery is created).

let cssInjected = false;
export function injectCss() {
  if (cssInjected) return;
  cssInjected = true;
  const link = document.createElement("link");
  link.rel = "stylesheet";
  link.href = new URL("./gallery.css", import.meta.url).href;
  document.head.appendChild(link);
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const fmt = (n) => Number(n).toLocaleString("en-US");
export const score = (v) => (typeof v === "number" ? v.toFixed(2) : "–");
