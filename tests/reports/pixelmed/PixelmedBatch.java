// Runs PixelMed's validators on many files in one JVM (it is slow to start): java PixelmedBatch.java FILE...
// Each file's report is printed between "=== BEGIN <path>" and "=== END <path>" lines. SR files go to
// DicomSRValidator (template and IOD checks), all others to DicomInstanceValidator.
import com.pixelmed.dicom.AttributeList;
import com.pixelmed.dicom.TagFromName;
import com.pixelmed.dicom.SOPClass;
import com.pixelmed.validate.DicomInstanceValidator;
import com.pixelmed.validate.DicomSRValidator;

public class PixelmedBatch {
    public static void main(String[] args) throws Exception {
        DicomSRValidator sr = new DicomSRValidator();
        DicomInstanceValidator instance = new DicomInstanceValidator();
        for (String path : args) {
            System.out.println("=== BEGIN " + path);
            try {
                AttributeList list = new AttributeList();
                list.read(path);
                String sopClass = com.pixelmed.dicom.Attribute.getSingleStringValueOrEmptyString(list, TagFromName.SOPClassUID);
                if (SOPClass.isStructuredReport(sopClass)) {
                    System.out.print(sr.validate(list));
                } else {
                    System.out.print(instance.validate(list));
                }
            } catch (Exception e) {
                System.out.println("Error: validator failed: " + e);
            }
            System.out.println("=== END " + path);
        }
    }
}
