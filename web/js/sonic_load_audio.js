import { app } from "../../../scripts/app.js";

// Load Audio (Sonic) declares its file combo with audio_upload, like core Load Audio.
// The frontend (1.32.9, and still the newest) gives the audio preview widget
// ("audioUI") only to core nodes it knows by name, and its upload button looks that
// widget up: without it the node fails to build in the page. Add the preview widget
// before the upload button, as the frontend does for core Load Audio.
app.registerExtension({
  name: "sonicdiffusion.LoadAudioPreview",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== "SonicLoadAudio") return;
    const required = nodeData.input?.required;
    if (!required || required.audioUI) return;
    const upload = required.upload;
    delete required.upload;
    required.audioUI = ["AUDIO_UI", {}];
    if (upload) required.upload = upload;
  },
});
