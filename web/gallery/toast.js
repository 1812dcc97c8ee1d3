// Short messages at the bottom of the gallery. Importing this module does nothing; createGallery installs it.

export function installToast(g) {
  const { toast } = g.dom;

  let toastTimer = null;
  function showToast(message, kind = "info") {
    toast.textContent = message;
    toast.dataset.kind = kind;
    toast.classList.add("ipa-show");
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => toast.classList.remove("ipa-show"), kind === "error" ? 6000 : 1800);
  }

  Object.assign(g, { showToast, stopToast: () => clearTimeout(toastTimer) });
}
