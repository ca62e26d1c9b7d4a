//! Text tools shared by plugins: sentence segmentation that is right for Chinese and English,
//! comparison keys, script detection. (Filled in with the dedupe plugin.)
